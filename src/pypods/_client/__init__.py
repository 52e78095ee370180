"""The client side of a pod: worker processes, connections to them, and pools of connections."""
