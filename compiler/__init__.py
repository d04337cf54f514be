"""ubique.compiler: frontends (tracer), graph passes, fusion, lowering to loop IR, schedules."""
