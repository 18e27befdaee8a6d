//! Counter slots that keep their service or backend across compiles.

use std::collections::HashMap;
use std::net::IpAddr;

use dataplane::table;

use crate::config::BackendKey;

/// Counter slots by name. A slot, once given, keeps its meaning for the life of the process, so
/// the workers' cumulative counters stay attached to the same service or backend across reloads
/// (a slot is never reused; a process that sees very many distinct backends grows its counters).
///
/// Every compile looks up every service and backend: slots are grouped by service name (one
/// string lookup per service, then address and port), hashed with the dataplane's fast hasher
/// (the keys come from the config, not from packets).
#[derive(Debug, Default)]
pub struct StatSlots {
    /// Index in `slots` of each service name.
    by_name: HashMap<String, usize, table::FastHash>,
    slots: Vec<ServiceSlots>,
    services: u32,
    backends: u32,
}

/// The slots of one service name.
#[derive(Debug, Default)]
struct ServiceSlots {
    /// Per port range.
    ranges: Vec<((u16, u16), u32)>,
    /// Per backend address and port.
    backends: HashMap<(IpAddr, u16), u32, table::FastHash>,
}

/// The backend slots of one service, to assign many with one lookup of its name.
pub(super) struct BackendSlots<'a> {
    slots: &'a mut ServiceSlots,
    next: &'a mut u32,
}

impl BackendSlots<'_> {
    /// The slot of the service's backend at `addr` and `port`, assigned on first use.
    pub(super) fn get(&mut self, addr: IpAddr, port: u16) -> u32 {
        *self.slots.backends.entry((addr, port)).or_insert_with(|| {
            let s = *self.next;
            *self.next += 1;
            s
        })
    }
}

impl StatSlots {
    /// Index of `name`'s slots, added on first use (only then is the name copied).
    fn index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.slots.len();
        self.slots.push(ServiceSlots::default());
        self.by_name.insert(name.to_string(), i);
        i
    }

    fn of(&self, name: &str) -> Option<&ServiceSlots> {
        self.by_name.get(name).and_then(|&i| self.slots.get(i))
    }

    /// The slot of a service's port range (`(0, 0)`: every port), assigned on first use.
    pub fn service(&mut self, name: &str, lo: u16, hi: u16) -> u32 {
        if let Some(s) = self.service_slot(name, lo, hi) {
            return s;
        }
        let next = self.services;
        self.services += 1;
        let i = self.index(name);
        self.slots[i].ranges.push(((lo, hi), next));
        next
    }

    /// The backend slots of service `name`.
    pub(super) fn backends_of(&mut self, name: &str) -> BackendSlots<'_> {
        let i = self.index(name);
        BackendSlots {
            slots: &mut self.slots[i],
            next: &mut self.backends,
        }
    }

    /// The slot of a backend, if it has one.
    pub fn backend_slot(&self, key: &BackendKey) -> Option<u32> {
        self.of(&key.service)?
            .backends
            .get(&(key.addr, key.port))
            .copied()
    }

    /// The slot of a service's port range, if it has one.
    pub fn service_slot(&self, name: &str, lo: u16, hi: u16) -> Option<u32> {
        self.of(name)?
            .ranges
            .iter()
            .find(|(r, _)| *r == (lo, hi))
            .map(|(_, s)| *s)
    }
}
