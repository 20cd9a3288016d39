"""`lmserve router`: an OpenAI-compatible gateway in front of `lmserve serve` replicas of one or more models.

The path of a request: app.py (HTTP) -> request.py (parse) -> routing.py (which model) -> queue.py (wait
for a replica slot; replica_group.py and policies.py pick the replica) -> forwarder.py (send, retry,
stream back through sse.py). backend.py and health.py track each replica's load and health; gateway.py
wires these together; metrics.py exports them.
"""
