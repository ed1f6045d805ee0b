"""Routers (registry "router"): the routing ablation axis."""

from moeframe.registry import Registry, import_components
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.plan import RoutingPlan

ROUTERS: Registry[Router] = Registry("router")

__all__ = ["ROUTERS", "RouteContext", "Router", "RoutingPlan"]

import_components(__name__, __path__)
