"""The bundled MindSpore Bloom (data plane): shipped to nodes, never imports orchestrator."""
