//! What a config needs of the machine that runs it: memory for the conntrack tables and the Maglev
//! tables, and a CPU for every worker to be pinned to. The rule is pure, the machine a parameter
//! ([`Host`]); [`Host::current`] reads this machine for `lb check`.

use std::fmt;

use dataplane::conntrack::Conntrack;
use dataplane::pipeline::FlowValue;

use crate::config::schema::Config;
use crate::diag::Problem;

/// The machine a config is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Online CPUs, by number: a worker pinned to any other core runs unpinned (`lb run` only
    /// warns).
    pub cpus: Vec<usize>,
    /// Bytes of memory a new process can have (`MemAvailable`).
    pub memory: u64,
}

impl Host {
    /// This machine: the online CPUs (`/sys/devices/system/cpu/online`) and `MemAvailable` (or
    /// `MemTotal`) from `/proc/meminfo`. What cannot be read does not limit: CPUs 0..the number
    /// std sees, no memory limit.
    pub fn current() -> Host {
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| parse_cpu_list(&s))
            .unwrap_or_else(|| {
                (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
            });
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                meminfo_bytes(&s, "MemAvailable").or_else(|| meminfo_bytes(&s, "MemTotal"))
            })
            .unwrap_or(u64::MAX);
        Host { cpus, memory }
    }
}

/// A kernel CPU list such as `0-3,8,10-11`; `None` when it does not parse.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        // The kernel's CPU numbers are below CPU_SETSIZE; a larger range is not a CPU list.
        if lo > hi || hi >= 1 << 16 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// `key` of /proc/meminfo (`MemAvailable:  123456 kB`) in bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

/// The memory a config needs, by what holds it. Computed from sizes, never by allocating them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Dataplane workers, each with its own conntrack table.
    pub workers: u64,
    /// Bytes of one worker's conntrack table (its capacity rounded up to a power of two).
    pub conntrack_per_worker: u64,
    /// Maglev tables (one per service).
    pub tables: u64,
    /// Bytes of all the Maglev tables of one generation.
    pub maglev: u64,
    /// Bytes the largest Maglev table needs while it is built, besides itself.
    pub maglev_build: u64,
    /// (VIP, protocol, port) entries of the routing table: a port range claims each of its ports.
    pub vip_ports: u64,
}

/// Bytes per Maglev slot: the table holds a backend index (`u16`) per slot.
const MAGLEV_SLOT_BYTES: u64 = 2;

/// Bytes per slot that building a Maglev table takes besides the table: a `u32` group head and a
/// bit of the taken set per slot (see `dataplane::maglev::build`); one byte more for slack.
const MAGLEV_BUILD_BYTES: u64 = 5;

/// Bytes per (VIP, protocol, port) entry of the routing table's hash map: key and value (about 32
/// bytes) and a control byte, at the map's 7/8 load, rounded up.
const VIP_PORT_BYTES: u64 = 48;

impl MemoryEstimate {
    /// Bytes of the routing table's VIP entries, one generation.
    pub fn vip_bytes(&self) -> u64 {
        self.vip_ports.saturating_mul(VIP_PORT_BYTES)
    }

    /// Everything at its peak: the conntrack of every worker, two generations of Maglev tables and
    /// VIP entries (a reload builds the new ones while the old ones serve) and one table being
    /// built.
    pub fn total(&self) -> u64 {
        self.workers
            .saturating_mul(self.conntrack_per_worker)
            .saturating_add(
                self.maglev
                    .saturating_add(self.vip_bytes())
                    .saturating_mul(2),
            )
            .saturating_add(self.maglev_build)
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = conntrack {} worker{} x {} + (Maglev {} table{} {} + {} VIP port{} {}) x 2 (a reload holds the old and the new) + {} to build a table",
            Bytes(self.total()),
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            Bytes(self.conntrack_per_worker),
            self.tables,
            if self.tables == 1 { "" } else { "s" },
            Bytes(self.maglev),
            self.vip_ports,
            if self.vip_ports == 1 { "" } else { "s" },
            Bytes(self.vip_bytes()),
            Bytes(self.maglev_build),
        )
    }
}

/// A byte count for people: `512 B`, `64.0 MiB`, `1.5 GiB`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
    }
}

impl Config {
    /// The memory this config needs, computed from its sizes.
    pub fn memory_estimate(&self) -> MemoryEstimate {
        let slots: u64 = self.services.iter().map(|s| s.table_size as u64).sum();
        let largest = self
            .services
            .iter()
            .map(|s| s.table_size as u64)
            .max()
            .unwrap_or(0);
        MemoryEstimate {
            workers: u64::from(self.dataplane.workers),
            conntrack_per_worker: Conntrack::<FlowValue>::bytes_for(self.conntrack.capacity),
            tables: self.services.len() as u64,
            maglev: slots.saturating_mul(MAGLEV_SLOT_BYTES),
            maglev_build: largest.saturating_mul(MAGLEV_BUILD_BYTES),
            vip_ports: self
                .services
                .iter()
                .map(|s| {
                    if s.ports.is_empty() {
                        1
                    } else {
                        s.ports
                            .iter()
                            .map(|r| u64::from(r.hi - r.lo) + 1)
                            .sum::<u64>()
                    }
                })
                .sum(),
        }
    }

    /// The rules that depend on the machine: every worker's core is online (`lb run` would run
    /// the worker unpinned) and the memory the config needs fits in what `host` has.
    pub fn check_host(&self, host: &Host) -> Vec<Problem> {
        let mut out = Vec::new();
        let dp = &self.dataplane;
        let online = || cpu_list(&host.cpus);
        match &dp.cores {
            Some(cores) => {
                for (i, c) in cores.iter().enumerate() {
                    if !host.cpus.contains(c) {
                        out.push(
                            Problem::new(
                                format!("dataplane.cores[{i}]"),
                                format!(
                                    "dataplane: core {c} is not online on this machine (online: {})",
                                    online()
                                ),
                            )
                            .hint("a worker on a missing core runs unpinned: list online cores"),
                        );
                    }
                }
            }
            None => {
                if let Some(c) = (0..usize::from(dp.workers)).find(|c| !host.cpus.contains(c)) {
                    out.push(
                        Problem::new(
                            "dataplane.workers",
                            format!(
                                "dataplane: {} workers go to cores 0-{}, but core {c} is not online on this machine (online: {})",
                                dp.workers,
                                dp.workers - 1,
                                online()
                            ),
                        )
                        .hint("lower workers, or list the cores to use in cores = [...]"),
                    );
                }
            }
        }
        let need = self.memory_estimate();
        if need.total() > host.memory {
            // Point at what takes most: conntrack, the largest table, or the most ports.
            let conntrack = need.workers.saturating_mul(need.conntrack_per_worker);
            let (maglev, vips) = (
                need.maglev.saturating_mul(2),
                need.vip_bytes().saturating_mul(2),
            );
            let largest = |key: fn(&crate::config::Service) -> usize| {
                (0..self.services.len()).max_by_key(|&i| key(&self.services[i]))
            };
            let path = if maglev >= conntrack && maglev >= vips {
                largest(|s| s.table_size).map(|i| format!("services[{i}].table_size"))
            } else if vips > conntrack {
                largest(|s| s.ports.iter().map(|r| usize::from(r.hi - r.lo)).sum())
                    .map(|i| format!("services[{i}].ports"))
            } else {
                None
            }
            .unwrap_or_else(|| "conntrack.capacity".to_string());
            out.push(
                Problem::new(
                    path,
                    format!(
                        "the config needs {} of memory, more than the {} this machine has available",
                        Bytes(need.total()),
                        Bytes(host.memory)
                    ),
                )
                .hint(format!(
                    "{need}; lower [conntrack] capacity, workers or table sizes"
                )),
            );
        }
        out
    }
}

/// `0-3,8`: a CPU list as the kernel writes it.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_meminfo_parse() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-99999999999"), None);
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        let m = "MemTotal:        8000000 kB\nMemFree: 1 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(meminfo_bytes(m, "MemAvailable"), Some(4_096_000_000));
        assert_eq!(meminfo_bytes(m, "MemTotal"), Some(8_192_000_000));
        assert_eq!(meminfo_bytes(m, "Nope"), None);
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(64 << 20).to_string(), "64.0 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Bytes(u64::MAX).to_string(), "16.0 EiB");
    }
}
