"""The Kafka topics of the mesh ledger, named once: every producer and consumer imports them here."""

from __future__ import annotations

#: metered messages of routers, in columnar records
USAGE_TOPIC = "mesh.usage"
#: every other domain event: realms, stakes, SWAP, chain heads, epochs, settlements
LEDGER_TOPIC = "mesh.ledger"
#: rejected records with their reason and original bytes
DEAD_TOPIC = "mesh.dead"

ALL_TOPICS = (USAGE_TOPIC, LEDGER_TOPIC, DEAD_TOPIC)
