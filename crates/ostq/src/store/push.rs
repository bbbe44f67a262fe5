//! Pushing jobs: plain envelopes with `LPUSH`, everything else through `push.lua`.

use redis::{Cmd, FromRedisValue, Value};

use super::call::{self, query_pipe, run_atomic, ScriptCall};
use super::durable::{self, WaitFor};
use super::Conn;
use crate::durability::Acked;
use crate::envelope::EnvelopeFields;
use crate::keys::QueueKeys;
use crate::{Error, Result};

/// Jobs per `LPUSH` command and per `push.lua` call in bulk pushes.
pub(crate) const BULK_CHUNK: usize = 1000;

/// Plain jobs for the pending list, encoded straight into `LPUSH` commands of [`BULK_CHUNK`]
/// envelopes as they are added (no envelope is built or kept on its own), then sent by
/// [`PlainPush::send`].
pub(crate) struct PlainPush<'k> {
    pending: &'k str,
    cmds: Vec<Cmd>,
    in_last: usize,
    scratch: Vec<u8>,
}

impl<'k> PlainPush<'k> {
    pub(crate) fn new(keys: &'k QueueKeys, jobs: usize) -> Self {
        Self {
            pending: &keys.pending,
            cmds: Vec::with_capacity(jobs.div_ceil(BULK_CHUNK)),
            in_last: BULK_CHUNK,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, envelope: &EnvelopeFields<'_>) {
        if self.in_last == BULK_CHUNK {
            let mut cmd = redis::cmd("LPUSH");
            cmd.arg(self.pending);
            self.cmds.push(cmd);
            self.in_last = 0;
        }
        self.scratch.clear();
        envelope.encode_into(&mut self.scratch);
        if let Some(cmd) = self.cmds.last_mut() {
            cmd.arg(&self.scratch[..]);
        }
        self.in_last += 1;
    }

    /// Appends the jobs to the pending list; several commands go in one `MULTI`/`EXEC`, so that a
    /// bulk push lands whole or not at all (under OOM, say, Redis refuses the transaction rather
    /// than its later commands). With `wait` (a durable push) the wait follows in the same round
    /// trip, and what it confirmed is returned.
    pub(crate) async fn send(
        self,
        conn: &mut Conn,
        wait: Option<&WaitFor>,
    ) -> Result<Option<Acked>> {
        let atomic = self.cmds.len() > 1;
        if let Some(wait) = wait {
            let written = durable::write_and_wait(conn, &self.cmds, atomic, wait).await?;
            return Ok(Some(written.acked));
        }
        let mut pipe = redis::pipe();
        for cmd in self.cmds {
            pipe.add_command(cmd).ignore();
        }
        if atomic {
            pipe.atomic();
        }
        query_pipe::<()>(&pipe, conn).await?;
        Ok(None)
    }
}

/// What every job of one `push.lua` call shares (the script's per-job ARGV fields but id and
/// payload).
pub(crate) struct PushFields<'a> {
    pub(crate) name: &'a str,
    pub(crate) max_attempts: u32,
    pub(crate) priority: i32,
    pub(crate) delay_ms: u64,
    pub(crate) run_at_ms: u64,
    pub(crate) flags: u64,
    pub(crate) unique: &'a str,
    pub(crate) unique_ttl_ms: u64,
    /// The W3C trace context every job of the call carries: push.lua's optional arguments after
    /// the jobs' fields ("" = none: they are not sent).
    pub(crate) traceparent: &'a str,
    pub(crate) tracestate: &'a str,
}

/// `push.lua`'s answer for one job.
pub(crate) struct Pushed {
    pub(crate) id: String,
    pub(crate) created: bool,
    /// Why not created: `unique`, or the state of the job that holds the id.
    pub(crate) why: String,
}

/// Pushes `(id, payload)` jobs through `push.lua`, [`BULK_CHUNK`] per call; several calls run in
/// one `MULTI`/`EXEC` (all or nothing). With `wait` (a durable push) the wait follows in the same
/// round trip, and what it confirmed is returned.
pub(crate) async fn push_scripted(
    conn: &mut Conn,
    keys: &QueueKeys,
    jobs: &[(String, &[u8])],
    fields: &PushFields<'_>,
    wait: Option<&WaitFor>,
) -> Result<(Vec<Pushed>, Option<Acked>)> {
    let calls: Vec<ScriptCall> = jobs
        .chunks(BULK_CHUNK)
        .map(|chunk| {
            let mut call = ScriptCall::new(&call::PUSH, &keys.push_keys());
            call.arg(&keys.prefix);
            for (id, payload) in chunk {
                call.arg(id)
                    .arg(*payload)
                    .arg(fields.name)
                    .arg(fields.max_attempts)
                    .arg(fields.priority)
                    .arg(fields.delay_ms)
                    .arg(fields.run_at_ms)
                    .arg(fields.flags)
                    .arg(fields.unique)
                    .arg(fields.unique_ttl_ms);
            }
            if !fields.traceparent.is_empty() {
                call.arg(fields.traceparent);
                if !fields.tracestate.is_empty() {
                    call.arg(fields.tracestate);
                }
            }
            call
        })
        .collect();
    let (replies, acked): (Vec<Value>, Option<Acked>) = match (calls.as_slice(), wait) {
        ([one], None) => (vec![one.run(conn).await?], None),
        (_, None) => (run_atomic(&calls, conn).await?, None),
        ([one], Some(wait)) => {
            let written = durable::run_and_wait(conn, one, wait).await?;
            (written.replies, Some(written.acked))
        }
        (_, Some(wait)) => {
            // Inside MULTI a NOSCRIPT would not be retried: load the script first.
            if let Some(first) = calls.first() {
                first.load(conn).await?;
            }
            let cmds: Vec<Cmd> = calls.iter().map(|c| c.cmd().clone()).collect();
            let written = durable::write_and_wait(conn, &cmds, true, wait).await?;
            (written.replies, Some(written.acked))
        }
    };
    let replies: Vec<Vec<Vec<Value>>> = replies
        .into_iter()
        .map(|reply| Vec::<Vec<Value>>::from_redis_value(reply).map_err(bad_reply))
        .collect::<Result<_>>()?;
    let pushed = replies
        .into_iter()
        .flatten()
        .map(parse_pushed)
        .collect::<Result<_>>()?;
    Ok((pushed, acked))
}

fn bad_reply(e: redis::ParsingError) -> Error {
    Error::Protocol(format!("push.lua answered: {e}"))
}

/// One `{id, created, why}` answer of push.lua (older versions answered `{id, created}`).
fn parse_pushed(reply: Vec<Value>) -> Result<Pushed> {
    let mut fields = reply.into_iter();
    let (Some(id), Some(created)) = (fields.next(), fields.next()) else {
        return Err(Error::Protocol(
            "push.lua answered a job with fewer than 2 fields".into(),
        ));
    };
    let why = match fields.next() {
        Some(v) => String::from_redis_value(v).map_err(bad_reply)?,
        None => String::new(),
    };
    Ok(Pushed {
        id: String::from_redis_value(id).map_err(bad_reply)?,
        created: i64::from_redis_value(created).map_err(bad_reply)? != 0,
        why,
    })
}
