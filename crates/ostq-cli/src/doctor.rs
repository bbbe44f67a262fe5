//! `ostq doctor`: the library's checks of the deployment (`Client::doctor`), one line each with
//! the fix under those that did not pass, and an exit code by the worst of them.

use ostq::admin::doctor::{Report, Status};

use crate::cli::{DoctorArgs, Global};
use crate::util::{connect, lib_err, Exit};

/// Exit code when a check failed.
const EXIT_FAIL: u8 = 3;
/// Exit code with `--strict` when the worst is a warning.
const EXIT_WARN_STRICT: u8 = 4;

pub async fn run(global: &Global, args: DoctorArgs) -> anyhow::Result<()> {
    let client = connect(&global.redis_url()).await?;
    let report = client
        .doctor()
        .await
        .map_err(lib_err("cannot run the checks"))?;
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    match report.worst {
        Status::Fail => Err(Exit {
            code: EXIT_FAIL,
            message: String::new(),
        }
        .into()),
        Status::Warn if args.strict => Err(Exit {
            code: EXIT_WARN_STRICT,
            message: String::new(),
        }
        .into()),
        _ => Ok(()),
    }
}

/// `PASS eviction     maxmemory-policy is noeviction…`, then `     fix: …` under the others.
fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in &report.checks {
        out.push_str(&format!(
            "{} {:width$}  {}\n",
            check.status.label(),
            check.name,
            check.summary
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("     {:width$}  fix: {fix}\n", ""));
        }
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} passed, {} warned, {} failed\n",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}
