//! The local addresses of a network namespace: NodePorts answer on every one of them, so they are
//! frontends too (kube-proxy's `--nodeport-addresses` defaults to all local addresses).

use std::net::IpAddr;

/// Addresses configured in the calling thread's namespace (`getifaddrs` asks the kernel over a
/// netlink socket of the current namespace).
fn here() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let fam = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if fam == libc::AF_INET {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
            } else if fam == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sa.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// The local addresses of the named namespace, or of ours.
pub fn of(netns: Option<&str>) -> ctnetlink::Result<Vec<IpAddr>> {
    match netns {
        None => here().map_err(|source| ctnetlink::Error::Io {
            op: "list local addresses",
            source,
        }),
        Some(ns) => ctnetlink::netns::run_in(ns, here)?.map_err(|source| ctnetlink::Error::Io {
            op: "list local addresses",
            source,
        }),
    }
}
