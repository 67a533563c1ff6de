"""The federation: what crosses the WAN between cities and the coordinator (torch-free).

Membership and per-round quorum, the global model and the outer optimizer (held by the
coordinator), the typed wire messages, TLS identities, robust aggregation and the audit trail.
"""
