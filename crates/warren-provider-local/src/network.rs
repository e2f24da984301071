//! Network mode `bridge` for local workspaces: a point-to-point veth pair per
//! workspace (host side `wv<id>`, workspace side `eth0`) with a /30 from
//! 10.89.0.0/16, a default route through the host, NAT egress, and firewall
//! rules owned by warren: workspaces cannot reach each other or the host's
//! own services, and nothing can connect into a workspace from outside.
//! (Traffic to a workspace's ports goes through its agent, not the network.)

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The pool all workspace links come from.
pub const POOL: &str = "10.89.0.0/16";
/// Interface name prefix of the host sides (iptables matches `wv+`).
const PREFIX: &str = "wv";

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e} (is it installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Where [`ensure_rule`] puts a missing rule.
#[derive(Clone, Copy)]
enum At {
    End,
    Head,
}

/// Adds `rule` to `chain` of `table` unless it is there.
fn ensure_rule(table: &str, chain: &str, rule: &[&str], at: At) -> Result<(), String> {
    let mut check = vec!["-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if ok("iptables", &check) {
        return Ok(());
    }
    let mut add = match at {
        At::End => vec!["-w", "-t", table, "-A", chain],
        At::Head => vec!["-w", "-t", table, "-I", chain, "1"],
    };
    add.extend_from_slice(rule);
    run("iptables", &add)
}

fn ensure_chain(table: &str, chain: &str, from: &str) -> Result<(), String> {
    if !ok("iptables", &["-w", "-t", table, "-L", chain, "-n"]) {
        run("iptables", &["-w", "-t", table, "-N", chain])?;
    }
    if !ok("iptables", &["-w", "-t", table, "-C", from, "-j", chain]) {
        run("iptables", &["-w", "-t", table, "-I", from, "1", "-j", chain])?;
    }
    Ok(())
}

/// Installs warren's chains and rules (idempotent).
pub fn install_rules() -> Result<(), String> {
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    let wv = format!("{PREFIX}+");
    ensure_chain("filter", "WARREN-FORWARD", "FORWARD")?;
    ensure_rule("filter", "WARREN-FORWARD", &["-i", &wv, "-d", POOL, "-j", "DROP"], At::End)?;
    // Only workspace addresses may leave (behind each workspace's strict
    // reverse-path filter); first in the chain, also on hosts whose chain
    // an older warren made.
    ensure_rule("filter", "WARREN-FORWARD", &["-i", &wv, "!", "-s", POOL, "-j", "DROP"], At::Head)?;
    ensure_rule("filter", "WARREN-FORWARD", &["-i", &wv, "-j", "ACCEPT"], At::End)?;
    ensure_rule(
        "filter",
        "WARREN-FORWARD",
        &["-o", &wv, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        At::End,
    )?;
    ensure_rule("filter", "WARREN-FORWARD", &["-o", &wv, "-j", "DROP"], At::End)?;
    ensure_chain("filter", "WARREN-INPUT", "INPUT")?;
    ensure_rule(
        "filter",
        "WARREN-INPUT",
        &["-i", &wv, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        At::End,
    )?;
    ensure_rule("filter", "WARREN-INPUT", &["-i", &wv, "-j", "DROP"], At::End)?;
    ensure_chain("nat", "WARREN-POSTROUTING", "POSTROUTING")?;
    ensure_rule("nat", "WARREN-POSTROUTING", &["-s", POOL, "!", "-d", POOL, "-j", "MASQUERADE"], At::End)?;
    Ok(())
}

/// Removes warren's chains and rules (for uninstall).
pub fn remove_rules() {
    for (table, chain, from) in [
        ("filter", "WARREN-FORWARD", "FORWARD"),
        ("filter", "WARREN-INPUT", "INPUT"),
        ("nat", "WARREN-POSTROUTING", "POSTROUTING"),
    ] {
        while ok("iptables", &["-w", "-t", table, "-D", from, "-j", chain]) {}
        let _ = run("iptables", &["-w", "-t", table, "-F", chain]);
        let _ = run("iptables", &["-w", "-t", table, "-X", chain]);
    }
}

/// Host and workspace addresses of link `index` (a /30 each).
pub fn addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 89, 0, 0)) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Link indexes whose addresses some interface on this host already uses
/// (other warren instances, or leftovers), so they are never handed out twice.
pub fn indexes_in_use_on_host() -> std::collections::HashSet<u32> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let base = u32::from(Ipv4Addr::new(10, 89, 0, 0));
    text.split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|a| (base..base + 65536).contains(a))
        .map(|a| (a - base) / 4)
        .collect()
}

/// How many links the pool holds.
pub const LINKS: u32 = 65536 / 4;

pub fn host_ifname(id: &str) -> String {
    format!("{PREFIX}{}", &id[..id.len().min(12)])
}

/// Creates the veth pair into the network namespace of `pid` and configures
/// both ends.
pub fn attach(id: &str, pid: i32, index: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (host_ip, ws_ip) = addresses(index);
    let host_if = host_ifname(id);
    let peer = format!("{host_if}p");
    let _ = run("ip", &["link", "del", &host_if]);
    run("ip", &["link", "add", &host_if, "type", "veth", "peer", "name", &peer])?;
    let pid_s = pid.to_string();
    let setup = || -> Result<(), String> {
        // The host's end speaks IPv4 only and checks sources: no IPv6 (a
        // workspace's router advertisements would otherwise set the host's
        // routes, and its link-local address would reach host services past
        // the IPv4 firewall), strict reverse-path filtering (no spoofed
        // sources leave the host).
        let conf = |family: &str, key: &str, value: &str| {
            std::fs::write(format!("/proc/sys/net/{family}/conf/{host_if}/{key}"), value)
                .map_err(|e| format!("{family} {key} of {host_if}: {e}"))
        };
        if Path::new("/proc/sys/net/ipv6/conf").exists() {
            conf("ipv6", "accept_ra", "0")?;
            conf("ipv6", "autoconf", "0")?;
            conf("ipv6", "disable_ipv6", "1")?;
        }
        conf("ipv4", "rp_filter", "1")?;
        conf("ipv4", "accept_redirects", "0")?;
        conf("ipv4", "send_redirects", "0")?;
        run("ip", &["link", "set", &peer, "netns", &pid_s])?;
        run("ip", &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let ns = format!("--net=/proc/{pid}/ns/net");
        let nsenter = |args: &[&str]| {
            let mut a = vec![ns.as_str(), "ip"];
            a.extend_from_slice(args);
            run("nsenter", &a)
        };
        nsenter(&["link", "set", &peer, "name", "eth0"])?;
        nsenter(&["addr", "add", &format!("{ws_ip}/30"), "dev", "eth0"])?;
        nsenter(&["link", "set", "eth0", "up"])?;
        nsenter(&["route", "add", "default", "via", &host_ip.to_string()])?;
        Ok(())
    };
    setup().inspect_err(|_| detach(id))?;
    Ok((host_ip, ws_ip))
}

/// Removes the host side (the workspace side goes with its namespace).
pub fn detach(id: &str) {
    let host_if = host_ifname(id);
    if Path::new("/sys/class/net").join(&host_if).exists() {
        let _ = run("ip", &["link", "del", &host_if]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_slash_30s() {
        assert_eq!(addresses(0), (Ipv4Addr::new(10, 89, 0, 1), Ipv4Addr::new(10, 89, 0, 2)));
        assert_eq!(addresses(64), (Ipv4Addr::new(10, 89, 1, 1), Ipv4Addr::new(10, 89, 1, 2)));
        assert_eq!(addresses(LINKS - 1).1, Ipv4Addr::new(10, 89, 255, 254));
        // The peer adds a "p": both must fit IFNAMSIZ (15 characters).
        assert!(host_ifname("abcdefghijklmnopqrst").len() < 15);
    }
}
