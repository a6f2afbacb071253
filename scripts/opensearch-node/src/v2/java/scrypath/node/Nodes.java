package scrypath.node;

import java.util.List;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/** OpenSearch 2.x: a Node with the HTTP transport and the common analyzers as classpath plugins. */
final class Nodes {
    private Nodes() {}

    /** Node's constructor that accepts classpath plugins is protected. */
    private static final class PluginNode extends Node {
        PluginNode(Environment environment) {
            super(environment, List.of(Netty4Plugin.class, CommonAnalysisPlugin.class), true);
        }
    }

    static Node create(Environment environment) {
        return new PluginNode(environment);
    }
}
