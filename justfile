# Developer recipes. The README's two commands never need `just`.

# Run a node on the embedded SQLite default.
run:
    cargo run -p trekker-node

# All tests, PostgreSQL suites included.
test:
    cargo test --workspace

# The tests without PostgreSQL, on purpose (each skipped test says so).
test-no-postgres:
    TREKKER_SKIP_POSTGRES=1 cargo test --workspace

# Mutation testing of the pure crates (slow; not in CI). Record the figures
# in docs/testing.md. `cargo install cargo-mutants` first.
mutants:
    cargo mutants -p trekker-domain -p trekker-placement -p trekker-tenancy --timeout-multiplier 3 -j 1

# Mutation testing of the use cases and the supervisor on their unit tests
# (mocks, the paused clock). In place, on the warm target dir: about 4 s a
# mutant for the use cases, 19 s for the runtime; do not edit the crate
# while it runs. `just mutants-runtime 0/3` runs one third.
mutants-app:
    cargo mutants -p trekker-app --in-place --timeout 60

mutants-runtime shard="0/1":
    cargo mutants -p trekker-runtime --in-place --timeout 60 --shard {{shard}}

# Three nodes on a throwaway PostgreSQL (or one SQLite file without it),
# secret and admin token printed; Ctrl-C stops and removes everything.
cluster:
    bash scripts/cluster.sh

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

# Registrations/s through a node over HTTP at 1, 8 and 32 clients against
# pgbench running the same writes, on a throwaway PostgreSQL.
bench-register:
    cargo run --release -p trekker-bench --bin bench-register

# Where the node's CPU goes while guests register (a flat profile of the
# node's threads; perf is Debian's linux-perf; docs/benchmarks.md).
profile-register:
    cargo build --release -p trekker-bench --bin bench-register
    BENCH_SECS=5 BENCH_MAX_REGISTRATIONS=10000 perf record -F 499 -o target/register.perf -- target/release/bench-register
    perf report -i target/register.perf --comms node --no-children --sort sym --percentage relative --stdio | head -60

# A 1,000 x 1,000-bot fleet: two real quiet nodes' database time per second
# (headroom for 1,000 nodes), the quiet poll now and with per-bot leases,
# admin pages, and registrations full against empty.
bench-fleet:
    cargo run --release -p trekker-bench --bin bench-fleet

# Failover of 1,000 simulated bots against a move-free boot (docs/benchmarks.md).
bench-failover:
    cargo run --release -p trekker-bench --bin bench-failover
