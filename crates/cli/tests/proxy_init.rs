//! `weft proxy-init` against real iptables in a network namespace.

use std::process::Command;
use weft_test_support::Net;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(WEFT).args(args).output().expect("running weft")
}

fn nat_rules(ns: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "exec", ns, "iptables-save", "-t", "nat"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A")).map(String::from).collect()
}

#[test]
fn apply_is_idempotent_and_remove_leaves_nothing() {
    let Some(net) = Net::for_test("apply_is_idempotent_and_remove_leaves_nothing") else { return };
    let pod = net.pod("init");
    let ns = pod.netns();
    let args = ["proxy-init", "--netns", ns, "--proxy-uid", "2102", "--outbound-ports-to-ignore", "443"];

    assert!(weft(&args).status.success());
    let first = nat_rules(ns);
    assert_eq!(
        first,
        [
            "-A PREROUTING -j PROXY_INIT_REDIRECT",
            "-A OUTPUT -j PROXY_INIT_OUTPUT",
            "-A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
            "-A PROXY_INIT_OUTPUT -o lo -j RETURN",
            "-A PROXY_INIT_OUTPUT -p tcp -m multiport --dports 443 -j RETURN",
            "-A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
            "-A PROXY_INIT_REDIRECT -p tcp -m multiport --dports 4190,4191 -j RETURN",
            "-A PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
        ]
    );
    // Again: the same rules, not twice as many.
    assert!(weft(&args).status.success());
    assert_eq!(nat_rules(ns), first);

    assert!(weft(&["proxy-init", "--netns", ns, "--remove"]).status.success());
    assert!(nat_rules(ns).is_empty(), "{:?}", nat_rules(ns));
    // Removing what is gone is fine.
    assert!(weft(&["proxy-init", "--netns", ns, "--remove"]).status.success());
}

#[test]
fn dry_run_prints_the_commands() {
    let out =
        weft(&["proxy-init", "--dry-run", "--proxy-gid", "2102", "--subnets-to-ignore", "10.96.0.0/12"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("iptables -w -t nat -A PROXY_INIT_OUTPUT -m owner --gid-owner 2102 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("-A PROXY_INIT_OUTPUT -d 10.96.0.0/12 -j RETURN"), "{text}");
    assert!(text.contains("-A PREROUTING -j PROXY_INIT_REDIRECT"), "{text}");
}

#[test]
fn bad_flags_are_refused_with_the_value() {
    let out = weft(&["proxy-init", "--dry-run", "--inbound-ports-to-ignore", "4190,http"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"http\""));
    let out = weft(&["proxy-init", "--dry-run", "--subnets-to-ignore", "10.0.0.0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"10.0.0.0\" is not a subnet"));
}
