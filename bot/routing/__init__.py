"""Routing truth: where a call to a number ends up (trace), what is wrong with
the routing (doctor), the digest, destination labels, and the routing rules they share."""
