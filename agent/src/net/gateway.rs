//! The default gateway, for targets with `host = "gateway"` (the probes ask every
//! window) and for `check`'s plan: read from the kernel's IPv4 routing table in
//! `/proc/net/route`. Parsing is pure; [`default_gateway`] reads the file.

use std::net::Ipv4Addr;

/// Where Linux lists the IPv4 routes.
pub const PROC_NET_ROUTE: &str = "/proc/net/route";

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// The gateway of the best default route in a `/proc/net/route` table: destination
/// and mask 0, flags up and gateway, lowest metric. `None` when there is none.
pub fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (dest, gw, flags, metric, mask) = (
        col("Destination")?,
        col("Gateway")?,
        col("Flags")?,
        col("Metric")?,
        col("Mask")?,
    );
    lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            let flags = hex(flags)?;
            let up_gw = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            if hex(dest)? != 0 || hex(mask)? != 0 || !up_gw {
                return None;
            }
            let metric: u32 = f.get(metric)?.parse().ok()?;
            // The kernel prints the network-order address read as a native u32, so its
            // native bytes are the octets in order (lowest byte first on little-endian).
            let addr = Ipv4Addr::from(hex(gw)?.to_ne_bytes());
            Some((metric, addr))
        })
        .min_by_key(|&(metric, _)| metric)
        .map(|(_, addr)| addr)
}

/// The default gateway of this machine, from [`PROC_NET_ROUTE`].
pub fn default_gateway() -> std::io::Result<Option<Ipv4Addr>> {
    Ok(parse_default_gateway(&std::fs::read_to_string(
        PROC_NET_ROUTE,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wwan0\t00000000\t01010A0A\t0003\t0\t0\t50\t00000000\t0\t0\t0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn picks_the_default_route_with_the_lowest_metric() {
        assert_eq!(
            parse_default_gateway(TABLE),
            Some(Ipv4Addr::new(10, 10, 1, 1))
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn reads_the_little_endian_hex_address() {
        let one = "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT\n\
                   eth0 00000000 0102A8C0 0003 0 0 100 00000000 0 0 0\n";
        assert_eq!(
            parse_default_gateway(one),
            Some(Ipv4Addr::new(192, 168, 2, 1))
        );
    }

    #[test]
    fn none_without_a_default_route_or_with_garbage() {
        let no_default = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                          eth0 0002A8C0 00000000 0001 0 0 100 00FFFFFF\n";
        assert_eq!(parse_default_gateway(no_default), None);
        let down = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                    eth0 00000000 0102A8C0 0002 0 0 100 00000000\n";
        assert_eq!(parse_default_gateway(down), None, "route not up");
        assert_eq!(parse_default_gateway(""), None);
        assert_eq!(parse_default_gateway("Iface Destination\nzz"), None);
        let bad = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                   eth0 00000000 XYZ 0003 0 0 100 00000000\n";
        assert_eq!(parse_default_gateway(bad), None);
    }

    #[test]
    fn this_machine_has_a_readable_table() {
        // A test machine may have no default route; the file must still read and parse.
        assert!(default_gateway().is_ok());
    }
}
