//! The inventory file (`--inventory`): parse, then plan with the example policy and render.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netguard::inventory::{InventoryFileError, parse_inventory};
use netguard::policy::Policy;
use netguard_fuzz::{check_location, example_policy, plan_and_check};
use std::path::Path;
use std::sync::OnceLock;

static POLICY: OnceLock<Policy> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("inventory.toml");
    match parse_inventory(path, text) {
        Ok(inv) => {
            let policy = POLICY.get_or_init(example_policy);
            let p = plan_and_check(policy, &inv);
            // What `netguard log` and `explain` read from a plan must hold for any inventory.
            let _ = p.managed_bridges();
            let _ = serde_json::to_string(&p);
        }
        Err(InventoryFileError::Invalid { loc, message }) => {
            assert_eq!(loc.file, path, "error names another file");
            check_location(text, loc.line, loc.col, &message);
        }
        Err(e) => panic!("parsing text must not fail with an I/O error: {e}"),
    }
});
