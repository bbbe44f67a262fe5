//! Reading the workers' execution logs (`exec-<pid>.log`, one line per completed execution) as
//! they grow. A line is `<n> <attempt> <pid> <end unix ms> <start unix ms> <job id>`; the last two
//! fields (and the attempt, written `-` by older workers) may be missing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What the logs say so far.
pub(crate) struct ExecLogs {
    dir: PathBuf,
    files: HashMap<PathBuf, Tail>,
    /// Per good job: who completed it and when.
    pub(crate) runs: Vec<Vec<Run>>,
    /// Good jobs completed at least once.
    pub(crate) done: u64,
    /// Completed executions in all.
    pub(crate) executions: u64,
    /// Lines that did not parse or named no good job.
    pub(crate) bad_lines: u64,
}

/// One completed execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    /// The worker process.
    pub(crate) pid: u32,
    /// When it completed (unix ms; 0 when the line has no time).
    pub(crate) at_ms: u64,
    /// When the handler started (unix ms; `at_ms` when the line does not say).
    pub(crate) start_ms: u64,
    /// The attempt (from 1), when the line says.
    pub(crate) attempt: Option<u32>,
    /// The job id, when the line says.
    pub(crate) id: Option<String>,
}

#[derive(Default)]
struct Tail {
    offset: u64,
    partial: Vec<u8>,
}

impl ExecLogs {
    pub(crate) fn new(dir: &Path, jobs: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            runs: vec![Vec::new(); jobs as usize],
            done: 0,
            executions: 0,
            bad_lines: 0,
        }
    }

    /// Reads whatever was appended since the last call (new files included).
    pub(crate) fn poll(&mut self) -> std::io::Result<()> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_log = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("exec-") && n.ends_with(".log"));
            if is_log {
                paths.push(path);
            }
        }
        for path in paths {
            let mut tail = self.files.remove(&path).unwrap_or_default();
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(tail.offset))?;
            let mut fresh = Vec::new();
            file.read_to_end(&mut fresh)?;
            tail.offset += fresh.len() as u64;
            tail.partial.extend_from_slice(&fresh);
            if let Some(last_newline) = tail.partial.iter().rposition(|&b| b == b'\n') {
                let complete: Vec<u8> = tail.partial.drain(..=last_newline).collect();
                for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    self.record(line);
                }
            }
            self.files.insert(path, tail);
        }
        Ok(())
    }

    fn record(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let mut fields = text.split_whitespace();
        let n = fields.next().and_then(|f| f.parse::<u64>().ok());
        let attempt = fields.next().and_then(|f| f.parse::<u32>().ok());
        let pid = fields.next().and_then(|f| f.parse::<u32>().ok());
        let at_ms = fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        let start_ms = fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(at_ms);
        let id = fields.next().map(str::to_owned);
        match (n, pid) {
            (Some(n), Some(pid)) if (n as usize) < self.runs.len() => {
                let runs = &mut self.runs[n as usize];
                if runs.is_empty() {
                    self.done += 1;
                }
                runs.push(Run {
                    pid,
                    at_ms,
                    start_ms,
                    attempt,
                    id,
                });
                self.executions += 1;
            }
            _ => self.bad_lines += 1,
        }
    }

    /// Good jobs never recorded as completed (their numbers).
    pub(crate) fn missing(&self) -> Vec<u64> {
        (0..self.runs.len() as u64)
            .filter(|&n| self.runs[n as usize].is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_appended_lines_and_keeps_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec-7.log");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"0 - 7 100\n1 - 7 101\n2 -").unwrap();
        let mut logs = ExecLogs::new(dir.path(), 3);
        logs.poll().unwrap();
        assert_eq!((logs.done, logs.executions), (2, 2));
        file.write_all(b" 7 102\n0 - 8\nnonsense\n99 - 7 103\n0 3 9 200 150 01JOB\n")
            .unwrap();
        logs.poll().unwrap();
        assert_eq!((logs.done, logs.executions, logs.bad_lines), (3, 5, 2));
        let first = Run {
            pid: 7,
            at_ms: 100,
            start_ms: 100,
            attempt: None,
            id: None,
        };
        let second = Run {
            pid: 8,
            at_ms: 0,
            start_ms: 0,
            attempt: None,
            id: None,
        };
        let third = Run {
            pid: 9,
            at_ms: 200,
            start_ms: 150,
            attempt: Some(3),
            id: Some("01JOB".to_owned()),
        };
        assert_eq!(logs.runs[0], vec![first, second, third]);
        assert!(logs.missing().is_empty());
    }
}
