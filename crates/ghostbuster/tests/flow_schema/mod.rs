//! docs/flow.schema.json, compiled once per test binary: the test binaries that see a flow JSON
//! output (scan/sweep/explain reports through `scan_support::Run`, `/debug/recent` in
//! telemetry_admin, the classifier's verdicts in classify_rows) hold every flow object to it. Not
//! a test binary of its own: each one costs a link.

use std::sync::OnceLock;

use serde_json::Value;

const SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/flow.schema.json"
));

fn compiled() -> &'static (boon::Schemas, boon::SchemaIndex) {
    static SCHEMA_ONCE: OnceLock<(boon::Schemas, boon::SchemaIndex)> = OnceLock::new();
    SCHEMA_ONCE.get_or_init(|| {
        let json: Value = serde_json::from_str(SCHEMA).expect("docs/flow.schema.json is JSON");
        let mut schemas = boon::Schemas::new();
        let mut c = boon::Compiler::new();
        // date-time, ipv4 and ipv6 are checked, not just annotations.
        c.enable_format_assertions();
        c.add_resource("urn:ghostbuster:flow", json)
            .expect("add the schema");
        let id = c
            .compile("urn:ghostbuster:flow", &mut schemas)
            .unwrap_or_else(|e| panic!("docs/flow.schema.json does not compile: {e:#}"));
        (schemas, id)
    })
}

/// Panics, naming what is wrong, unless `flow` is a valid flow object.
pub fn assert_flow(flow: &Value) {
    let (schemas, id) = compiled();
    if let Err(e) = schemas.validate(flow, *id) {
        panic!(
            "not a flow object of docs/flow.schema.json: {e:#}\n{}",
            serde_json::to_string_pretty(flow).unwrap_or_default()
        );
    }
}

/// Every element of `doc["flows"]` (a report or `/debug/recent`); how many there were. (Some
/// binaries that include this module only check single objects.)
#[allow(dead_code)]
pub fn assert_flows(doc: &Value) -> usize {
    let flows = doc["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("no flows array in {doc}"));
    flows.iter().for_each(assert_flow);
    flows.len()
}
