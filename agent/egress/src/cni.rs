//! The CNI bridge plugin (Debian's `containernetworking-plugins`,
//! `/usr/lib/cni/bridge` with `host-local` IPAM): the configuration the
//! agent hands it on stdin, and the call's network read back from its
//! result. NAT is left to [`crate::rules`] (`ipMasq: false`: the plugin's
//! own would add iptables chains per call).

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::net::Ipv4Net;
use crate::rules::CallNet;

/// The configuration for `plan`'s bridge. `mtu` must be the uplink's
/// (the plugin's default of 1500 breaks paths with a smaller one);
/// `ipam_dir` should be on a tmpfs (`/run/...`) so that a reboot frees
/// the addresses with the namespaces that held them.
pub fn bridge_config(
    name: &str,
    bridge: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
    ipam_dir: &str,
) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": false,
        "mtu": mtu,
        "ipam": {
            "type": "host-local",
            "dataDir": ipam_dir,
            "ranges": [[{ "subnet": subnet.to_string(), "gateway": gateway.to_string() }]],
            // The call's default route, through the bridge.
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
    .to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("the CNI result is not JSON: {0}")]
    Json(String),
    #[error("the CNI result names no {0}")]
    Missing(&'static str),
}

/// The call's network from the plugin's result: the host end of the veth
/// (the interface with no sandbox that is not the bridge), the call's MAC
/// (the interface in the sandbox) and its IPv4 address.
pub fn parse_result(text: &str, bridge: &str) -> Result<CallNet, ResultError> {
    let result: Value = serde_json::from_str(text).map_err(|e| ResultError::Json(e.to_string()))?;
    let interfaces = result["interfaces"]
        .as_array()
        .ok_or(ResultError::Missing("interfaces"))?;
    let field = |iface: &Value, key: &str| iface[key].as_str().map(str::to_string);
    let veth = interfaces
        .iter()
        .filter(|i| i["sandbox"].as_str().unwrap_or("").is_empty())
        .filter_map(|i| field(i, "name"))
        .find(|name| name != bridge)
        .ok_or(ResultError::Missing("host veth"))?;
    let (sandbox_index, mac) = interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| !i["sandbox"].as_str().unwrap_or("").is_empty())
        .and_then(|(n, i)| Some((n, field(i, "mac")?)))
        .ok_or(ResultError::Missing("sandbox interface"))?;
    let ip = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| {
            ip["interface"]
                .as_u64()
                .is_none_or(|n| n as usize == sandbox_index)
        })
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .next()
        .ok_or(ResultError::Missing("IPv4 address"))?;
    Ok(CallNet { veth, mac, ip })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_what_the_plugin_takes() {
        let config: Value = serde_json::from_str(&bridge_config(
            "faas-egress",
            "faas0",
            "10.231.0.0/16".parse().unwrap(),
            "10.231.0.1".parse().unwrap(),
            1400,
            "/run/faas/cni-ipam",
        ))
        .unwrap();
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["ipMasq"], false);
        assert_eq!(config["mtu"], 1400);
        assert_eq!(config["ipam"]["dataDir"], "/run/faas/cni-ipam");
        assert_eq!(config["ipam"]["ranges"][0][0]["subnet"], "10.231.0.0/16");
        assert_eq!(config["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
    }

    #[test]
    fn the_result_gives_veth_mac_and_address() {
        // As bridge 1.1.1 printed it on this kind of machine.
        let text = r#"{"cniVersion":"1.0.0","interfaces":[
            {"name":"faas0","mac":"5e:0b:59:2a:11:01"},
            {"name":"veth32da646f","mac":"d2:6e:1a:0f:3c:9a"},
            {"name":"eth0","mac":"c6:53:9e:27:c4:10","sandbox":"/var/run/netns/faas-x"}],
            "ips":[{"interface":2,"address":"10.231.0.2/16","gateway":"10.231.0.1"}],
            "dns":{}}"#;
        assert_eq!(
            parse_result(text, "faas0").unwrap(),
            CallNet {
                veth: "veth32da646f".into(),
                mac: "c6:53:9e:27:c4:10".into(),
                ip: "10.231.0.2".parse().unwrap(),
            }
        );
        assert!(matches!(
            parse_result("{}", "faas0"),
            Err(ResultError::Missing("interfaces"))
        ));
        assert!(matches!(
            parse_result("not json", "faas0"),
            Err(ResultError::Json(_))
        ));
        let no_ip = r#"{"interfaces":[{"name":"veth1"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","sandbox":"/x"}],"ips":[]}"#;
        assert!(matches!(
            parse_result(no_ip, "faas0"),
            Err(ResultError::Missing("IPv4 address"))
        ));
    }
}
