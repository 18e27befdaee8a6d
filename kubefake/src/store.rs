//! The object store: every resource's objects as JSON, the global resourceVersion, and the
//! history of changes that watches replay (until compacted).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::selector::{FieldSelector, LabelSelector};

/// A resource type the server knows: where it lives in the URL space and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; "" for the core group (`/api/v1`).
    pub group: String,
    /// API version, e.g. "v1".
    pub version: String,
    /// Plural resource name in URLs, e.g. "services".
    pub plural: String,
    /// Kind, e.g. "Service" (lists are "ServiceList").
    pub kind: String,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Has a `/status` subresource: normal writes keep `.status`, status writes change only it.
    pub has_status: bool,
}

impl ResourceType {
    /// A resource type from its parts.
    pub fn new(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        has_status: bool,
    ) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            plural: plural.to_owned(),
            kind: kind.to_owned(),
            namespaced,
            has_status,
        }
    }

    /// `apiVersion` as objects carry it ("v1", "discovery.k8s.io/v1").
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn key(&self) -> TypeKey {
        (
            self.group.clone(),
            self.version.clone(),
            self.plural.clone(),
        )
    }

    /// `plural.group` as error messages name it.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The resource types served out of the box.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    let t = ResourceType::new;
    vec![
        t("", "v1", "services", "Service", true, true),
        t("", "v1", "secrets", "Secret", true, false),
        t("", "v1", "configmaps", "ConfigMap", true, false),
        t("", "v1", "events", "Event", true, false),
        t("", "v1", "namespaces", "Namespace", false, true),
        t("", "v1", "pods", "Pod", true, true),
        t("", "v1", "endpoints", "Endpoints", true, false),
        t("events.k8s.io", "v1", "events", "Event", true, false),
        t(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            false,
        ),
        t(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "Ingress",
            true,
            true,
        ),
        t(
            "networking.k8s.io",
            "v1",
            "ingressclasses",
            "IngressClass",
            false,
            false,
        ),
        t("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        t(
            "gateway.networking.k8s.io",
            "v1",
            "gatewayclasses",
            "GatewayClass",
            false,
            true,
        ),
        t(
            "gateway.networking.k8s.io",
            "v1",
            "gateways",
            "Gateway",
            true,
            true,
        ),
        t(
            "gateway.networking.k8s.io",
            "v1",
            "httproutes",
            "HTTPRoute",
            true,
            true,
        ),
        t(
            "gateway.networking.k8s.io",
            "v1beta1",
            "referencegrants",
            "ReferenceGrant",
            true,
            false,
        ),
    ]
}

type TypeKey = (String, String, String);
/// (namespace or "" when cluster-scoped, name).
pub(crate) type ObjKey = (String, String);

/// An error answered as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (404, 409, 410, ...).
    pub code: u16,
    /// Machine-readable reason ("NotFound", "AlreadyExists", "Conflict", "Expired", ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn not_found(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", ty.qualified()),
        )
    }

    fn conflict(ty: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                ty.qualified()
            ),
        )
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object kube-apiserver answers with.
    pub(crate) fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// One write, as watches replay it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    ty: TypeKey,
    pub key: ObjKey,
    pub before: Option<Arc<Value>>,
    pub after: Option<Arc<Value>>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything but `.status` (for types with a status subresource).
    Main,
    /// Only `.status` (the `/status` subresource).
    Status,
    /// Everything, status included (test controls only).
    All,
}

/// How a PATCH body is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// JSON merge patch (RFC 7386); strategic merge patches are treated the same.
    Merge,
    /// Server-side apply, treated as a merge that creates the object when absent.
    Apply,
    /// JSON patch (RFC 6902): a list of operations.
    Json,
}

/// Selection for LIST and WATCH.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str()) {
                return false;
            }
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Everything the fake API server holds.
#[derive(Debug)]
pub(crate) struct Store {
    types: Vec<ResourceType>,
    /// The last resourceVersion handed out.
    pub rv: u64,
    /// Shared with the history: a version is stored once however many changes name it.
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Change>,
    /// Watches and continue tokens from a resourceVersion below this get 410 Expired.
    pub history_start: u64,
    history_limit: usize,
    uids: u64,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The object without metadata and status: what a `generation` bump tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_obj) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in patch_obj {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            types: builtin_types(),
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_start: 0,
            history_limit: 10_000,
            uids: 0,
        }
    }

    pub(crate) fn register(&mut self, ty: ResourceType) {
        self.types.retain(|t| t.key() != ty.key());
        self.types.push(ty);
    }

    /// Stops serving a type (as if its CRD were absent); its objects are kept.
    pub(crate) fn unregister(&mut self, group: &str, version: &str, plural: &str) {
        self.types
            .retain(|t| !(t.group == group && t.version == version && t.plural == plural));
    }

    /// The types served, in registration order.
    pub(crate) fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub(crate) fn find_type(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    pub(crate) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim_history();
    }

    /// Forgets all history: watches and continue tokens from any older resourceVersion get 410.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.history_start = self.rv;
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.history_start = c.rv;
            }
        }
    }

    fn key_for(ty: &ResourceType, ns: &str, name: &str) -> ObjKey {
        let ns = if ty.namespaced { ns } else { "" };
        (ns.to_owned(), name.to_owned())
    }

    pub(crate) fn get(&self, ty: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&ty.key())
            .and_then(|m| m.get(&Self::key_for(ty, ns, name)))
            .map(|v| (**v).clone())
            .ok_or_else(|| ApiError::not_found(ty, name))
    }

    /// Stores `after` (or removes the object when None) as a new resourceVersion, unless
    /// nothing changed (as kube-apiserver, a no-op write keeps the old resourceVersion).
    fn commit(&mut self, ty: &ResourceType, key: ObjKey, after: Option<Value>) -> Option<Value> {
        let objects = self.objects.entry(ty.key()).or_default();
        let before = objects.get(&key).cloned();
        if let (Some(b), Some(a)) = (&before, &after) {
            let mut a2 = a.clone();
            if let Some(rv) = meta_str(b, "resourceVersion") {
                meta_mut(&mut a2).insert("resourceVersion".into(), rv.into());
            }
            if a2 == **b {
                return Some((**b).clone());
            }
        }
        self.rv += 1;
        let rv = self.rv.to_string();
        let stored = match after {
            Some(mut a) => {
                meta_mut(&mut a).insert("resourceVersion".into(), rv.into());
                let a = Arc::new(a);
                objects.insert(key.clone(), a.clone());
                Some(a)
            }
            None => {
                objects.remove(&key);
                None
            }
        };
        let result = stored.as_ref().map(|a| (**a).clone());
        self.history.push_back(Change {
            rv: self.rv,
            ty: ty.key(),
            key,
            before,
            after: stored,
        });
        self.trim_history();
        result
    }

    /// Checks and fills the identity fields of a written object.
    fn normalize(
        ty: &ResourceType,
        ns: &str,
        path_name: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        obj["apiVersion"] = ty.api_version().into();
        obj["kind"] = ty.kind.clone().into();
        let m = meta_mut(obj);
        if let Some(path_name) = path_name {
            match m.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("name".into(), path_name.into());
                }
                Some(n) if n != path_name => {
                    return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({path_name})"
                )))
                }
                Some(_) => {}
            }
        }
        if ty.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("namespace".into(), ns.into());
                }
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                Some(_) => {}
            }
        } else {
            m.remove("namespace");
        }
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        ty: &ResourceType,
        ns: &str,
        mut obj: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        Self::normalize(ty, ns, None, &mut obj)?;
        let m = meta_mut(&mut obj);
        let name = match m.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match m.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    format!("{prefix}{:05x}", (self.uids + 1) & 0xfffff)
                }
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        if name.len() > 253 || name.contains('/') || name == "." || name == ".." {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("metadata.name: Invalid value: {name:?}"),
            ));
        }
        let key = Self::key_for(ty, ns, &name);
        if self
            .objects
            .get(&ty.key())
            .is_some_and(|o| o.contains_key(&key))
        {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", ty.qualified()),
            ));
        }
        self.uids += 1;
        m.insert("name".into(), name.into());
        m.insert(
            "uid".into(),
            format!("6b1f0000-0000-4000-8000-{:012x}", self.uids).into(),
        );
        m.insert("creationTimestamp".into(), now_rfc3339().into());
        m.insert("generation".into(), 1.into());
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        if ty.has_status && part == Part::Main {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        Ok(self.commit(ty, key, Some(obj)).unwrap_or(Value::Null))
    }

    /// 409 when the writer gave a resourceVersion and it is not the stored one.
    fn check_precondition(
        ty: &ResourceType,
        name: &str,
        old: &Value,
        precondition: Option<&str>,
    ) -> Result<(), ApiError> {
        match precondition.filter(|rv| !rv.is_empty()) {
            Some(rv) if meta_str(old, "resourceVersion") != Some(rv) => {
                Err(ApiError::conflict(ty, name))
            }
            _ => Ok(()),
        }
    }

    /// Replaces an existing object with `new` (already merged for patches).
    fn update(
        &mut self,
        ty: &ResourceType,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        Self::normalize(ty, ns, Some(name), &mut new)?;
        let result = match part {
            Part::Status => {
                let mut r = old.clone();
                match new.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Some(o) = r.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                r
            }
            Part::Main | Part::All => {
                let mut r = new;
                if part == Part::Main && ty.has_status {
                    let o = r.as_object_mut();
                    match (old.get("status"), o) {
                        (Some(s), Some(o)) => {
                            o.insert("status".into(), s.clone());
                        }
                        (None, Some(o)) => {
                            o.remove("status");
                        }
                        _ => {}
                    }
                }
                let generation = meta(&old)
                    .and_then(|m| m.get("generation"))
                    .and_then(Value::as_i64);
                let generation =
                    generation.unwrap_or(1) + i64::from(spec_part(&old) != spec_part(&r));
                let m = meta_mut(&mut r);
                for field in ["uid", "creationTimestamp"] {
                    match meta(&old).and_then(|om| om.get(field)) {
                        Some(v) => m.insert(field.into(), v.clone()),
                        None => m.remove(field),
                    };
                }
                m.insert("generation".into(), generation.into());
                r
            }
        };
        let key = Self::key_for(ty, ns, name);
        Ok(self.commit(ty, key, Some(result)).unwrap_or(Value::Null))
    }

    /// PUT: the object must exist; a given, stale `metadata.resourceVersion` is a 409.
    pub(crate) fn replace(
        &mut self,
        ty: &ResourceType,
        ns: &str,
        name: &str,
        new: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let old = self.get(ty, ns, name)?;
        Self::check_precondition(ty, name, &old, meta_str(&new, "resourceVersion"))?;
        self.update(ty, ns, name, old, new, part)
    }

    /// PATCH (merge, strategic-as-merge, or server-side apply).
    pub(crate) fn patch(
        &mut self,
        ty: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Json {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| {
                ApiError::bad_request(format!("the JSON patch does not parse: {e}"))
            })?;
            let old = self.get(ty, ns, name)?;
            let mut new = old.clone();
            json_patch::patch(&mut new, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch does not apply: {e}"),
                )
            })?;
            Self::check_precondition(ty, name, &old, meta_str(&new, "resourceVersion"))?;
            return self.update(ty, ns, name, old, new, part);
        }
        if !patch.is_object() {
            return Err(ApiError::bad_request("the patch is not a JSON object"));
        }
        let old = match self.get(ty, ns, name) {
            Ok(old) => old,
            Err(_) if kind == PatchKind::Apply && part != Part::Status => {
                let mut obj = patch.clone();
                Self::normalize(ty, ns, Some(name), &mut obj)?;
                return self.create(ty, ns, obj, part);
            }
            Err(e) => return Err(e),
        };
        Self::check_precondition(ty, name, &old, meta_str(patch, "resourceVersion"))?;
        let mut new = old.clone();
        merge_patch(&mut new, patch);
        self.update(ty, ns, name, old, new, part)
    }

    /// DELETE, with an optional resourceVersion precondition. Answers the deleted object
    /// carrying the deletion's resourceVersion.
    pub(crate) fn delete(
        &mut self,
        ty: &ResourceType,
        ns: &str,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Value, ApiError> {
        let old = self.get(ty, ns, name)?;
        Self::check_precondition(ty, name, &old, precondition)?;
        self.commit(ty, Self::key_for(ty, ns, name), None);
        let mut gone = old;
        meta_mut(&mut gone).insert("resourceVersion".into(), self.rv.to_string().into());
        Ok(gone)
    }

    /// The objects of a type as they were at resourceVersion `at` (current ones undone by
    /// the history after it), or 410 when the history no longer reaches back that far.
    fn objects_at(
        &self,
        ty: &ResourceType,
        at: u64,
    ) -> Result<BTreeMap<ObjKey, Arc<Value>>, ApiError> {
        let mut objs = self.objects.get(&ty.key()).cloned().unwrap_or_default();
        if at >= self.rv {
            return Ok(objs);
        }
        if at < self.history_start {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({}); start a new list without a continue \
                 token or resourceVersion",
                self.history_start
            )));
        }
        let tk = ty.key();
        for c in self.history.iter().rev().take_while(|c| c.rv > at) {
            if c.ty != tk {
                continue;
            }
            match &c.before {
                Some(b) => objs.insert(c.key.clone(), b.clone()),
                None => objs.remove(&c.key),
            };
        }
        Ok(objs)
    }

    /// LIST: a `XList` object, paged by `limit`/`continue` (a consistent snapshot across
    /// pages); `exact`: as of that resourceVersion (`resourceVersionMatch=Exact`).
    pub(crate) fn list(
        &self,
        ty: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
        exact: Option<u64>,
    ) -> Result<Value, ApiError> {
        let (at, after): (u64, Option<ObjKey>) = match continue_token.filter(|c| !c.is_empty()) {
            None => (exact.unwrap_or(self.rv), None),
            Some(token) => {
                let mut it = token.splitn(3, '/');
                let parsed = (it.next(), it.next(), it.next());
                match parsed {
                    (Some(rv), Some(ns), Some(name)) => {
                        let rv = rv
                            .parse::<u64>()
                            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
                        (rv, Some((ns.to_owned(), name.to_owned())))
                    }
                    _ => return Err(ApiError::bad_request("invalid continue token")),
                }
            }
        };
        let objs = self.objects_at(ty, at)?;
        let mut items: Vec<(ObjKey, Arc<Value>)> = Vec::new();
        let mut next = None;
        let range = objs
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a));
        for (k, v) in range {
            if !filter.matches(v) {
                continue;
            }
            if limit.is_some_and(|l| l > 0 && items.len() == l) {
                if let Some((last, _)) = items.last() {
                    next = Some(format!("{at}/{}/{}", last.0, last.1));
                }
                break;
            }
            items.push((k.clone(), v.clone()));
        }
        let mut metadata = json!({"resourceVersion": at.to_string()});
        if let Some(n) = next {
            metadata["continue"] = n.into();
        }
        Ok(json!({
            "kind": format!("{}List", ty.kind),
            "apiVersion": ty.api_version(),
            "metadata": metadata,
            "items": items.into_iter().map(|(_, v)| (*v).clone()).collect::<Vec<_>>(),
        }))
    }

    /// The changes of one type after resourceVersion `since` (410 when compacted away).
    pub(crate) fn changes_since(
        &self,
        ty: &ResourceType,
        since: u64,
    ) -> Result<Vec<Change>, ApiError> {
        if since < self.history_start {
            return Err(ApiError::expired(format!(
                "too old resource version: {since} ({})",
                self.history_start
            )));
        }
        let tk = ty.key();
        let start = self.history.partition_point(|c| c.rv <= since);
        Ok(self
            .history
            .range(start..)
            .filter(|c| c.ty == tk)
            .cloned()
            .collect())
    }

    /// Current objects of a type matching a filter, sorted by namespace and name.
    pub(crate) fn current(&self, ty: &ResourceType, filter: &Filter) -> Vec<Value> {
        self.objects
            .get(&ty.key())
            .map(|m| {
                m.values()
                    .filter(|v| filter.matches(v))
                    .map(|v| (**v).clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc_type() -> ResourceType {
        builtin_types()
            .into_iter()
            .find(|t| t.plural == "services")
            .expect("services")
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(
            &mut t,
            &json!({"a": null, "b": {"c": 5}, "l": [3], "n": "x"}),
        );
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3], "n": "x"}));
    }

    #[test]
    fn writes_bump_resource_version_and_generation_only_on_change() {
        let ty = svc_type();
        let mut s = Store::new();
        let obj = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}, "status": {"x": 1}});
        let created = s
            .create(&ty, "default", obj.clone(), Part::Main)
            .expect("create");
        assert_eq!(meta_str(&created, "resourceVersion"), Some("1"));
        assert!(created.get("status").is_none(), "create drops status");
        // Same content again: no new version.
        let same = s
            .replace(&ty, "default", "web", obj.clone(), Part::Main)
            .expect("noop");
        assert_eq!(meta_str(&same, "resourceVersion"), Some("1"));
        let mut changed = obj.clone();
        changed["spec"]["ports"][0]["port"] = 81.into();
        let r = s
            .replace(&ty, "default", "web", changed, Part::Main)
            .expect("replace");
        assert_eq!(meta_str(&r, "resourceVersion"), Some("2"));
        assert_eq!(r["metadata"]["generation"], 2);
        // Status write does not bump generation.
        let st = s
            .patch(
                &ty,
                "default",
                "web",
                PatchKind::Merge,
                &json!({"status": {"y": 2}}),
                Part::Status,
            )
            .expect("status");
        assert_eq!(st["metadata"]["generation"], 2);
        assert_eq!(st["status"], json!({"y": 2}));
        // A stale resourceVersion conflicts.
        let mut stale = obj;
        stale["metadata"]["resourceVersion"] = "1".into();
        let err = s
            .replace(&ty, "default", "web", stale, Part::Main)
            .expect_err("stale");
        assert_eq!(err.code, 409);
    }

    #[test]
    fn paged_list_is_a_consistent_snapshot() {
        let ty = svc_type();
        let mut s = Store::new();
        for i in 0..5 {
            s.create(
                &ty,
                "default",
                json!({"metadata": {"name": format!("s{i}")}}),
                Part::Main,
            )
            .expect("create");
        }
        let page1 = s
            .list(&ty, &Filter::default(), Some(2), None, None)
            .expect("page 1");
        let token = page1["metadata"]["continue"]
            .as_str()
            .expect("continue")
            .to_owned();
        s.delete(&ty, "default", "s4", None).expect("delete");
        let page2 = s
            .list(&ty, &Filter::default(), Some(2), Some(&token), None)
            .expect("page 2");
        let token = page2["metadata"]["continue"]
            .as_str()
            .expect("continue")
            .to_owned();
        let page3 = s
            .list(&ty, &Filter::default(), Some(2), Some(&token), None)
            .expect("page 3");
        let names: Vec<_> = [page1, page2, page3.clone()]
            .iter()
            .flat_map(|p| p["items"].as_array().cloned().unwrap_or_default())
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
        assert!(page3["metadata"].get("continue").is_none());
        s.compact();
        let err = s
            .list(&ty, &Filter::default(), Some(2), Some(&token), None)
            .expect_err("expired");
        assert_eq!(err.code, 410);
    }
}
