"""lmserve on Ray Serve: each model a deployment of autoscaled engine replicas, behind an ingress that applies
the router's model routing and queue bound (`lmserve cluster up|status|down`, docs/cluster.md)."""
