# Developer recipes. The README's two commands never need `just`.

# Run a node on the embedded SQLite default.
run:
    cargo run -p trekker-node

# All tests, PostgreSQL suites included.
test:
    cargo test --workspace

# What CI runs.
ci:
    bash .ci/run

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# The 10,000-bot boot benchmark (figures go to docs/benchmarks.md).
bench:
    cargo bench -p trekker-runtime --bench boot_10k
