//! The network page of the serial console and of the diagnostics bundle: this box's
//! addresses (getifaddrs), its default route (`/proc/net/route`), its DNS servers
//! (`/etc/resolv.conf`), and whether the S3 endpoint of the configuration resolves and
//! answers: a DNS lookup, a TCP connect and one HTTP request, each with a short timeout.
//!
//! Any HTTP answer counts as "answers" (an S3 server says 403 to an unsigned request): the
//! point is to tell a network problem from a credentials problem.
//!
//! It reads the system (getifaddrs, /proc, resolv.conf) and uses `https` for the check; it may not
//! touch anything of the gateway.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each step of the endpoint check (DNS, TCP connect, TLS + HTTP answer) gives up after this.
pub const ENDPOINT_STEP_TIMEOUT_SECS: u64 = 5;
/// Addresses shown per interface at most (a box has one or two).
const ADDRESSES_COUNT_MAX: usize = 16;

/// Where the kernel lists its IPv4 routes.
const PROC_NET_ROUTE: &str = "/proc/net/route";
/// Where the resolver reads its DNS servers.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// One address of one interface, `eth0 10.0.2.15/24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's name, `eth0`.
    pub interface: String,
    /// The address itself.
    pub address: IpAddr,
    /// The netmask's length in bits, `24` for 255.255.255.0.
    pub prefix_len: u32,
}

impl InterfaceAddress {
    /// Loopback and IPv6 link-local addresses mean nothing to someone at the site.
    pub fn is_reachable_from_lan(&self) -> bool {
        match self.address {
            IpAddr::V4(a) => !a.is_loopback(),
            IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
        }
    }
}

/// The box's IPv4 and IPv6 addresses, in the kernel's order.
pub fn addresses() -> Vec<InterfaceAddress> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in list {
        let (Some(addr), netmask) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let (address, prefix_len) = if let Some(sin) = addr.as_sockaddr_in() {
            let mask = netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(0, |m| u32::from(m.ip()).count_ones());
            (IpAddr::V4(sin.ip()), mask)
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let mask = netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(0, |m| u128::from(m.ip()).count_ones());
            (IpAddr::V6(sin6.ip()), mask)
        } else {
            continue;
        };
        out.push(InterfaceAddress {
            interface: ifa.interface_name,
            address,
            prefix_len,
        });
        if out.len() >= ADDRESSES_COUNT_MAX {
            break;
        }
    }
    out
}

/// The IPv4 default route in `/proc/net/route` text: (gateway, interface).
pub fn default_route(proc_net_route: &str) -> Option<(Ipv4Addr, String)> {
    proc_net_route.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, gateway, mask) =
            (cols.first()?, cols.get(1)?, cols.get(2)?, cols.get(7)?);
        if *dest != "00000000" || *mask != "00000000" {
            return None;
        }
        // The kernel prints the address as a host-order u32 in hex: little-endian bytes here.
        let raw = u32::from_str_radix(gateway, 16).ok()?;
        Some((Ipv4Addr::from(raw.to_le_bytes()), (*iface).to_owned()))
    })
}

/// The `nameserver` lines of resolv.conf text.
pub fn dns_servers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What the endpoint check found, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCheck {
    /// The endpoint checked, as the configuration gives it.
    pub url: String,
    /// One line per step done, in order.
    pub steps: Vec<String>,
    /// The status line of the HTTP answer, if there was one.
    pub answered: Option<String>,
}

/// DNS lookup, TCP connect and one `GET /` of `url` (http or https).
pub async fn check_endpoint(url: &str) -> EndpointCheck {
    let mut check = EndpointCheck {
        url: url.to_owned(),
        steps: Vec::new(),
        answered: None,
    };
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(why) => {
            check.steps.push(why);
            return check;
        }
    };
    let step = Duration::from_secs(ENDPOINT_STEP_TIMEOUT_SECS);
    let Some(first) = noted(
        &mut check.steps,
        resolve(&target.host, target.port, step).await,
    ) else {
        return check;
    };
    let Some(stream) = noted(&mut check.steps, connect(first, step).await) else {
        return check;
    };
    let started = Instant::now();
    let answer = if target.tls {
        tokio::time::timeout(
            step,
            https_status_line(stream, &target.host, &target.authority),
        )
        .await
    } else {
        tokio::time::timeout(step, status_line(stream, &target.authority)).await
    };
    match answer {
        Ok(Ok(line)) => {
            check.steps.push(format!(
                "HTTP: answered \"{line}\" ({} ms)",
                started.elapsed().as_millis()
            ));
            check.answered = Some(line);
        }
        Ok(Err(e)) => check.steps.push(format!("HTTP: no answer: {e}")),
        Err(_) => check.steps.push(format!(
            "HTTP: no answer within {ENDPOINT_STEP_TIMEOUT_SECS} s"
        )),
    }
    check
}

/// Notes a step's line, done or failed, and gives what the step got if it was done.
fn noted<T>(steps: &mut Vec<String>, step: Result<(T, String), String>) -> Option<T> {
    match step {
        Ok((got, done)) => {
            steps.push(done);
            Some(got)
        }
        Err(why) => {
            steps.push(why);
            None
        }
    }
}

/// Where the endpoint check connects, from the endpoint's URL.
struct Target {
    tls: bool,
    /// The host name or address, without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// What the `Host` header says: the URL's host, and its port if the URL has one.
    authority: String,
}

impl Target {
    /// The target of `url`, or the step line that says why there is none.
    fn parse(url: &str) -> Result<Target, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("scheme {other}: only http and https are checked")),
        };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Err("the URL has no host".into());
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or(&host)),
            None => parsed.host_str().unwrap_or(&host).to_owned(),
        };
        Ok(Target {
            tls,
            host,
            port,
            authority,
        })
    }
}

/// The DNS step: the first address of `host` and the step line, or the line that says why not.
async fn resolve(host: &str, port: u16, step: Duration) -> Result<(SocketAddr, String), String> {
    let started = Instant::now();
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(step, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(format!("DNS:  {host} does not resolve: {e}")),
            Err(_) => {
                return Err(format!(
                    "DNS:  no answer for {host} within {ENDPOINT_STEP_TIMEOUT_SECS} s"
                ));
            }
        };
    let Some(first) = addrs.first().copied() else {
        return Err(format!("DNS:  {host} has no address"));
    };
    let done = format!(
        "DNS:  {host} -> {} ({} ms)",
        first.ip(),
        started.elapsed().as_millis()
    );
    Ok((first, done))
}

/// The TCP step: a connection to `addr` and the step line, or the line that says why not.
async fn connect(addr: SocketAddr, step: Duration) -> Result<(TcpStream, String), String> {
    let started = Instant::now();
    let stream = match tokio::time::timeout(step, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("TCP:  cannot connect to {addr}: {e}")),
        Err(_) => {
            return Err(format!(
                "TCP:  no connection to {addr} within {ENDPOINT_STEP_TIMEOUT_SECS} s"
            ));
        }
    };
    let done = format!(
        "TCP:  connected to {addr} ({} ms)",
        started.elapsed().as_millis()
    );
    Ok((stream, done))
}

async fn https_status_line(
    stream: TcpStream,
    host: &str,
    authority: &str,
) -> std::io::Result<String> {
    let tls = crate::https::connect(stream, host, None).await?;
    status_line(tls, authority).await
}

/// Sends `GET /` and returns the first line of the answer.
async fn status_line<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
) -> std::io::Result<String> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: sftpgw-console\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    crate::https::status_line(&mut stream).await
}

/// The whole network report as text (80 columns). `endpoint` is the S3 endpoint URL, if the
/// configuration could be read.
pub async fn report(endpoint: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Network");
    let addrs = addresses();
    if addrs.is_empty() {
        let _ = writeln!(out, "  no addresses");
    }
    for a in &addrs {
        let _ = writeln!(out, "  {:<10} {}/{}", a.interface, a.address, a.prefix_len);
    }
    let route = std::fs::read_to_string(PROC_NET_ROUTE).unwrap_or_default();
    match default_route(&route) {
        Some((gw, iface)) => {
            let _ = writeln!(out, "  default route: {gw} via {iface}");
        }
        None => {
            let _ = writeln!(out, "  default route: none");
        }
    }
    let dns = dns_servers(&std::fs::read_to_string(Path::new(RESOLV_CONF)).unwrap_or_default());
    let _ = writeln!(
        out,
        "  DNS servers:   {}",
        if dns.is_empty() {
            "none".to_owned()
        } else {
            dns.join(" ")
        }
    );
    match endpoint {
        Some(url) => {
            let check = check_endpoint(url).await;
            let _ = writeln!(out, "S3 endpoint {}", check.url);
            for s in &check.steps {
                let _ = writeln!(out, "  {s}");
            }
            let verdict = if check.answered.is_some() {
                "reachable: it resolves and answers"
            } else {
                "NOT reachable"
            };
            let _ = writeln!(out, "  => {verdict}");
        }
        None => {
            let _ = writeln!(
                out,
                "S3 endpoint: unknown (the configuration cannot be read)"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn default_route_is_read_from_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(text),
            Some((Ipv4Addr::new(10, 0, 2, 2), "eth0".to_owned()))
        );
        assert_eq!(
            default_route(text.lines().take(2).collect::<Vec<_>>().join("\n").as_str()),
            None
        );
    }

    #[test]
    fn dns_servers_are_the_nameserver_lines() {
        let text =
            "# generated\nsearch lan\nnameserver 10.0.2.3\n  nameserver 1.1.1.1 \nnameserver\n";
        assert_eq!(dns_servers(text), vec!["10.0.2.3", "1.1.1.1"]);
    }

    #[tokio::test]
    async fn an_endpoint_that_answers_http_is_reachable_and_a_closed_port_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        });
        let check = check_endpoint(&format!("http://127.0.0.1:{port}")).await;
        assert_eq!(
            check.answered.as_deref(),
            Some("HTTP/1.1 403 Forbidden"),
            "{check:?}"
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let check = check_endpoint(&format!("http://127.0.0.1:{port}")).await;
        assert!(check.answered.is_none(), "{check:?}");
        assert!(
            check
                .steps
                .iter()
                .any(|s| s.starts_with("TCP:  cannot connect")),
            "{check:?}"
        );
    }
}
