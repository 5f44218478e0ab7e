//! Kernel log lines `netguard log` reads: saved logs line by line, and `/dev/kmsg` records
//! (the reader's pure part); then name resolution against a plan and both renderings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netguard::ops::klog::{Reader, json, parse_line, render, resolve};
use netguard::ops::style::Style;
use netguard::plan::Plan;
use netguard_fuzz::{example_inventory, example_policy};
use std::sync::OnceLock;

static PLAN: OnceLock<Plan> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let plan = PLAN.get_or_init(|| netguard::plan::plan(&example_policy(), &example_inventory()));
    // `--file`: the whole input as text lines.
    let text = String::from_utf8_lossy(data);
    let mut file = Reader::default();
    for l in text.lines() {
        let direct = parse_line(l);
        if let Some(d) = &direct {
            // A denial's names come from the plan, never from the line.
            assert!(d.from.is_none() && d.to.is_none());
        }
        file.line(l);
    }
    // `/dev/kmsg`: one record per read; the input split at NUL bytes into records, with a
    // clock taken from the first 16 bytes when there are that many.
    let clock = data.get(..16).map(|c| {
        let a = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
        (a, b)
    });
    let mut kmsg = Reader::default();
    for rec in data.split(|b| *b == 0) {
        kmsg.kmsg_record(rec, clock);
    }
    for r in [&mut file, &mut kmsg] {
        for d in &mut r.denials {
            resolve(d, plan);
        }
        for log_denied in [false, true] {
            let _ = serde_json::to_string(&json(&r.denials, log_denied));
            let _ = render(&r.denials, log_denied, Style::plain());
        }
    }
});
