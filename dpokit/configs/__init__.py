"""The recipes shipped with dpokit (`dpokit dpo --config dpo`; `dpokit run sentiment` reads
`sentiment.yaml`, `--quick` `sentiment_quick.yaml`). Package data: see pyproject.toml."""
