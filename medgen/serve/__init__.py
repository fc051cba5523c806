"""medgen serve: REST API, job store, worker and web page over trained bundles (see docs/serve.md)."""
