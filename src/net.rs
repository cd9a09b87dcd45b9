//! Network address rules for outbound requests.

use ipnet::IpNet;

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`, taken as /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "not a CIDR such as 10.0.0.0/8 or an address".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_single_addresses() {
        assert!(parse_cidr("127.0.0.1/32").is_ok());
        assert!(parse_cidr("::1").is_ok());
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("localhost").is_err());
    }
}
