//! Namespaces never outlive their owner: dropped on panic, and leftovers of dead processes are
//! removed by the next run.

mod common;

use std::path::Path;
use std::process::Command;

use netlab::{Lab, PodSpec};

fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !common::lab_available("namespaces_are_removed_when_a_test_panics") {
        return;
    }
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new().expect("lab");
        names.push(lab.node_netns().to_string());
        let pod = lab.add_pod(PodSpec::backend("doomed")).expect("pod");
        names.push(pod.netns().to_string());
        assert!(names.iter().all(|n| exists(n)));
        panic!("boom");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!exists(name), "{name} survived the panic");
    }
}

#[test]
fn leftovers_of_dead_processes_are_removed_and_live_ones_kept() {
    if !common::lab_available("leftovers_of_dead_processes_are_removed_and_live_ones_kept") {
        return;
    }
    // A pid that is not running: pid_max is at most 2^22.
    let dead = (3_000_000u32..4_194_304)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let leftover = format!("gbt-{}-0-node", to_base36(dead));
    let status = Command::new("ip")
        .args(["netns", "add", &leftover])
        .status()
        .unwrap();
    assert!(status.success());
    let mine = netlab::NetNs::create("mine").expect("own namespace");

    // Another test's Lab::new() may run the cleanup first: check the outcome, not who did it.
    netlab::cleanup_leftovers().expect("cleanup");
    assert!(
        !exists(&leftover),
        "leftover {leftover} of dead pid {dead} survived"
    );
    assert!(
        exists(mine.name()),
        "a live process's namespace must be kept"
    );
    let name = mine.name().to_string();
    drop(mine);
    assert!(!exists(&name));
}

fn to_base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}
