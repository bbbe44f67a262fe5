//! The reads behind `ostq doctor` (`admin::doctor`): one command sent to every server the client
//! reaches (each primary of a Cluster, or the one server), with each server's own reply, so
//! that a check can name the node that fails it. Nothing here writes.

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::Value;

use super::call::query;
use super::Conn;
use crate::{Error, Result};

/// One server's reply to a command sent to every server.
pub(crate) struct NodeReply {
    /// `host:port` of a Cluster primary; empty for the one server of other deployments.
    pub(crate) node: String,
    /// Its reply, or the error it answered (`NOPERM` under a restricted ACL user, say).
    pub(crate) reply: Result<Value>,
}

/// Sends `args` to every primary of a Cluster (or to the one server) and returns each reply.
/// An error that stops the whole request (unreachable Redis) is an error; a refusal by the
/// server is that server's reply.
pub(crate) async fn on_every_node(conn: &mut Conn, args: &[&str]) -> Result<Vec<NodeReply>> {
    let mut cmd = redis::Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    match conn {
        Conn::Cluster(cluster) => {
            // No response policy: the client answers with a map of node address → reply.
            let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let reply = cluster
                .route_command(cmd, routing)
                .await
                .map_err(Error::from_redis)?;
            let pairs = match reply {
                Value::Map(pairs) => pairs,
                other => return Err(Error::Protocol(format!("{other:?} for a per-node reply"))),
            };
            Ok(pairs
                .into_iter()
                .map(|(node, reply)| NodeReply {
                    node: text_of(&node).unwrap_or_default(),
                    reply: match reply {
                        Value::ServerError(e) => Err(Error::from_redis(e.into())),
                        other => Ok(other),
                    },
                })
                .collect())
        }
        _ => {
            let reply = match query::<Value>(&cmd, conn).await {
                Err(e) if e.is_transient() => return Err(e),
                reply => reply,
            };
            Ok(vec![NodeReply {
                node: String::new(),
                reply,
            }])
        }
    }
}

/// Sends each command of `commands` to every server, like [`on_every_node`], and returns the
/// replies per command. To one server (not a Cluster) they go in one pipeline: one round trip,
/// for checks that run at every worker's start.
pub(crate) async fn each_on_every_node(
    conn: &mut Conn,
    commands: &[&[&str]],
) -> Result<Vec<Vec<NodeReply>>> {
    if matches!(conn, Conn::Cluster(_)) {
        let mut replies = Vec::with_capacity(commands.len());
        for args in commands {
            replies.push(on_every_node(conn, args).await?);
        }
        return Ok(replies);
    }
    let mut pipe = redis::pipe();
    // Each command's refusal (NOPERM, say) is its own reply, not the pipeline's failure.
    pipe.ignore_errors();
    for args in commands {
        let cmd = pipe.cmd(args.first().copied().unwrap_or_default());
        for arg in args.iter().skip(1) {
            cmd.arg(*arg);
        }
    }
    let replies: Vec<Value> = super::call::query_pipe(&pipe, conn).await?;
    if replies.len() != commands.len() {
        return Err(Error::Protocol(format!(
            "{} replies to {} commands",
            replies.len(),
            commands.len()
        )));
    }
    Ok(replies
        .into_iter()
        .map(|reply| {
            vec![NodeReply {
                node: String::new(),
                reply: match reply {
                    Value::ServerError(e) => Err(Error::from_redis(e.into())),
                    other => Ok(other),
                },
            }]
        })
        .collect())
}

/// The text of a string reply (bulk, simple or verbatim).
pub(crate) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// The `(name, value)` pairs of a `CONFIG GET` reply (a flat array in RESP2, a map in RESP3).
pub(crate) fn config_pairs(value: &Value) -> Vec<(String, String)> {
    match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((text_of(name)?, text_of(value)?)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(name, value)| Some((text_of(name)?, text_of(value)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `TIME`'s reply as unix microseconds.
pub(crate) fn time_micros(value: &Value) -> Option<u64> {
    let Value::Array(items) = value else {
        return None;
    };
    let number = |v: &Value| -> Option<u64> {
        match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            other => text_of(other)?.parse().ok(),
        }
    };
    match items.as_slice() {
        [secs, micros] => number(secs)?
            .checked_mul(1_000_000)?
            .checked_add(number(micros)?),
        _ => None,
    }
}

/// `SCRIPT EXISTS`'s reply: one flag per hash asked.
pub(crate) fn flags_of(value: &Value) -> Option<Vec<bool>> {
    let Value::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|v| match v {
            Value::Int(n) => Some(*n == 1),
            Value::Boolean(b) => Some(*b),
            _ => None,
        })
        .collect()
}

/// How many lease groups of a queue are more than `margin_ms` past their deadline (on the
/// server's clock, as deadlines are), and the server's time in unix ms.
pub(crate) async fn leases_due_before(
    conn: &mut Conn,
    keys: &crate::keys::QueueKeys,
    margin_ms: u64,
) -> Result<(u64, u64)> {
    let time: Value = query(&redis::cmd("TIME"), conn).await?;
    let now_ms =
        time_micros(&time).ok_or_else(|| Error::Protocol(format!("{time:?} for TIME")))? / 1000;
    let before = now_ms.saturating_sub(margin_ms);
    let stale: u64 = query(
        redis::cmd("ZCOUNT")
            .arg(&keys.active)
            .arg("-inf")
            .arg(format!("({before}")),
        conn,
    )
    .await?;
    Ok((stale, now_ms))
}
