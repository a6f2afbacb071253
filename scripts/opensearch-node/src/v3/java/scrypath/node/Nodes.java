package scrypath.node;

import java.util.List;

import org.opensearch.Version;
import org.opensearch.analysis.common.CommonAnalysisModulePlugin;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.plugins.PluginInfo;
import org.opensearch.transport.Netty4ModulePlugin;

/** OpenSearch 3.x: classpath plugins are passed as PluginInfo, and the modules were renamed. */
final class Nodes {
    private Nodes() {}

    /** Node's constructor that accepts classpath plugins is protected. */
    private static final class PluginNode extends Node {
        PluginNode(Environment environment) {
            super(environment, List.of(info(Netty4ModulePlugin.class),
                                       info(CommonAnalysisModulePlugin.class)), true);
        }
    }

    private static PluginInfo info(Class<?> plugin) {
        return new PluginInfo(plugin.getName(), "classpath plugin", "NA", Version.CURRENT,
                              Runtime.version().feature() + "", plugin.getName(), null, List.of(), false);
    }

    static Node create(Environment environment) {
        return new PluginNode(environment);
    }
}
