"""Size and depth limits shared by the extraction, parsing and path code of
posttrain.rewards.structured.

A completion over 200,000 characters is not looked at ("too_large"); a payload over
100,000 characters is rejected ("payload_too_large"); nesting deeper than 64 is rejected
("too_deep", checked before json.loads, in the YAML composer, in the XML tree builder,
after tomllib); YAML loads with a SafeLoader that allows at most 100 aliases and 100,000
nodes counted with aliases expanded (a "billion laughs" stops after a few lines,
"too_many_nodes"), and no recursive aliases; XML with a DOCTYPE or ENTITY declaration is
rejected unparsed ("unsafe"); a CSV field over 10,000 characters is rejected. At most 8
fallback candidates (JSON spans, CSV paragraphs) are tried per payload.
"""

from __future__ import annotations

MAX_COMPLETION_CHARS = 200_000
MAX_PAYLOAD_CHARS = 100_000
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_YAML_ALIASES = 100
MAX_CSV_FIELD_CHARS = 10_000
MAX_SPAN_TRIES = 8
