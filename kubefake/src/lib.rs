//! An in-process fake Kubernetes API server for tests: list and watch the way kube-apiserver
//! does them (resourceVersion, chunked watch events, bookmarks, 410 Gone), label and field
//! selectors, status subresources, Events and Leases with optimistic concurrency (409).
