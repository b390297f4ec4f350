"""A noop step: drawn in the Steps view's flow graph between two topics, never run
(someone approves large orders by hand, outside the code)."""

config = {
    "name": "ManualApproval",
    "description": "A person approves large orders",
    "flows": ["orders"],
    "triggers": [],
    "virtualSubscribes": ["order.placed"],
    "virtualEnqueues": ["order.approved"],
}
