"""Launch helpers shared by every Triton kernel family (attention, routers, experts, telemetry)."""
