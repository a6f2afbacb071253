package scrypath.node;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;

/**
 * A real, single-node OpenSearch engine (2.x or 3.x, as built) with its REST API on 127.0.0.1.
 *
 * <p>Usage: {@code java -cp 'target/classes:target/lib/*' scrypath.node.EmbeddedOpenSearch HOME HTTP_PORT}
 * for a single node, or {@code ... HOME HTTP_PORT NODE_NAME TRANSPORT_PORT SEED_TRANSPORT_PORTS}
 * for node {@code scrypath-node-I} of a cluster on loopback (the seeds: every node's
 * transport port, comma-separated, in node order).
 *
 * <p>HOME is a throwaway directory (data and logs go below it). The process prints
 * {@code scrypath-opensearch started http=127.0.0.1:PORT} once the node is up and stops the
 * node cleanly on SIGTERM.
 */
public final class EmbeddedOpenSearch {

    private EmbeddedOpenSearch() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2 && args.length != 5) {
            System.err.println("usage: EmbeddedOpenSearch HOME HTTP_PORT"
                + " [NODE_NAME TRANSPORT_PORT SEED_TRANSPORT_PORTS]");
            System.exit(64);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        String httpPort = args[1];
        Files.createDirectories(home.resolve("data"));
        Files.createDirectories(home.resolve("logs"));
        Files.createDirectories(home.resolve("config"));

        Settings.Builder builder = Settings.builder()
            .put("cluster.name", "scrypath-test")
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("network.host", "127.0.0.1")
            .put("http.port", httpPort)
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .put("action.auto_create_index", true);
        if (args.length == 2) {
            builder.put("node.name", "scrypath-node")
                .put("transport.port", "0")
                .put("discovery.type", "single-node");
        } else {
            // One node of a cluster on loopback: every node seeds from every transport
            // port, and all of them are eligible cluster managers from the start.
            List<String> seeds = new ArrayList<>();
            List<String> names = new ArrayList<>();
            String[] ports = args[4].split(",");
            for (int i = 0; i < ports.length; i++) {
                seeds.add("127.0.0.1:" + ports[i]);
                names.add("scrypath-node-" + i);
            }
            builder.put("cluster.name", "scrypath-cluster")
                .put("node.name", args[2])
                .put("transport.port", args[3])
                .putList("discovery.seed_hosts", seeds)
                .putList("cluster.initial_cluster_manager_nodes", names);
        }
        Settings settings = builder.build();
        String nodeName = settings.get("node.name");

        LogConfigurator.configureWithoutConfig(settings);
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> nodeName);
        Node node = Nodes.create(environment);  // per OpenSearch line: src/v2 or src/v3

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(20, TimeUnit.SECONDS);
            } catch (Exception e) {
                System.err.println("scrypath-opensearch: error while stopping: " + e);
            } finally {
                stopped.countDown();
            }
        }, "scrypath-opensearch-shutdown"));

        node.start();
        System.out.println("scrypath-opensearch started http=127.0.0.1:" + httpPort);
        System.out.flush();
        // OpenSearch threads are daemons: block main until the shutdown hook has run.
        stopped.await();
    }
}
