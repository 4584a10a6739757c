//! The `@herald/client` package (client/node) from `cargo test`: `npm ci` when needed, the
//! strict typecheck, the build, and its `node --test` suites, which start the real
//! `heraldd` built here (paths passed in `HERALD_TEST_HERALDD` / `HERALD_TEST_PLUGIN_DIR`)
//! with the webhook plugin against a mock provider. A failing suite fails this test with
//! the whole node output.

use herald_tests::node::{client_package, npm_command, run};
use herald_tests::{ensure_built, heraldd_path};

#[test]
fn the_node_client_suites_pass_against_the_real_daemon() {
    let dir = client_package();
    let mut cmd = npm_command(dir, &["test"]);
    cmd.env("HERALD_TEST_HERALDD", heraldd_path())
        .env("HERALD_TEST_PLUGIN_DIR", ensure_built());
    let out = run(&mut cmd, "the @herald/client node --test suites");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The suites really ran (a glob that matched nothing would also "pass").
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 20,
        "expected the node suites to run, got:\n{stdout}"
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
