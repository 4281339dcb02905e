"""Reads an OpenMetrics exposition on stdin, parses it with prometheus_client's strict
OpenMetrics parser (which raises on any violation of the format), and prints every sample as
one JSON object per line: {"name": ..., "labels": {...}, "value": ...}. Exit 1 on a parse error."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = sys.stdin.read()
try:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))
except Exception as e:  # the parser raises ValueError and friends
    print(f"invalid OpenMetrics: {e}", file=sys.stderr)
    sys.exit(1)
