"""The edgefed protocol: objects, wire codec, desired-state deltas and topic names.

Imported by cloudcore and edgecore alike; imports neither. Everything the two sides
must agree on lives here and nowhere else.
"""

PROTOCOL_VERSION = 1
