//! `switchyard topology`: declare everything and print it, with each queue's leader.

use std::io::Write;
use std::process::ExitCode;

use super::UNREACHABLE;
use crate::broker::management::Management;
use crate::broker::{self, Topology};
use crate::config::Config;

/// `switchyard topology`: declares everything and prints it, with where each queue's leader is
/// (from the management API; when that cannot say, the command still succeeds and says why).
pub async fn topology(config: &Config, out: &mut impl Write) -> ExitCode {
    let topology = Topology::new(config);
    let result = async {
        let broker::Connected { connection, node } =
            broker::connect_any(&config.amqp, "switchyard topology").await?;
        topology.declare(&connection).await?;
        broker::close_connection(&connection, 200, "done").await;
        Ok::<usize, broker::BrokerError>(node)
    }
    .await;
    match result {
        Ok(node) => {
            let (placements, unknown) =
                placements(config, &config.amqp.url[node], &topology.all_queues()).await;
            let lines = topology.describe_with(|queue| match placements.get(queue) {
                Some(placement) => placement.describe(),
                None => "  leader: unknown".into(),
            });
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
            if let Some(why) = unknown {
                let _ = writeln!(out, "leader unknown ({why})");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

/// Where each queue's leader is, from the management API of the node `topology` connected to;
/// and, when the API could not say for some queue, why (after the first failure it stops asking).
async fn placements(
    config: &Config,
    node_url: &str,
    queues: &[String],
) -> (
    std::collections::HashMap<String, broker::management::Placement>,
    Option<String>,
) {
    let mut found = std::collections::HashMap::new();
    let api = match Management::new(config.amqp.management_url.as_deref(), node_url) {
        Ok(api) => api,
        Err(e) => return (found, Some(format!("management API: {e}"))),
    };
    for queue in queues {
        match api.placement(queue).await {
            Ok(placement) => {
                found.insert(queue.clone(), placement);
            }
            Err(e) => return (found, Some(e.to_string())),
        }
    }
    (found, None)
}
