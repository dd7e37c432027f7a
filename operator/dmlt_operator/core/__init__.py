"""What both custom resources share: settings, object identity, conditions and status deltas,
the planners' status builder, handler scaffolding, Kubernetes I/O and metrics."""
