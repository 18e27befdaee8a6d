//! Builds the DPDK port's C shim and bindings, with the `dpdk` feature only: the default build
//! is pure Rust and needs no DPDK, C compiler or libclang.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;
    use std::process::Command;

    /// DPDK libraries the port calls into (the drivers are loaded by EAL at run time).
    const LIBS: [&str; 4] = ["rte_eal", "rte_ethdev", "rte_mbuf", "rte_mempool"];

    /// Drivers linked into the binary with the `dpdk-static` feature (whole archives: a driver
    /// registers itself from a constructor nothing else references). EAL loads no driver at run
    /// time in a static build (it sees no shared EAL), so a device needs its driver here: the
    /// virtual devices the tests, examples and lab use, the PCI bus, and the ring mempool.
    const STATIC_DRIVERS: [&str; 9] = [
        "rte_bus_vdev",
        "rte_bus_pci",
        "rte_mempool_ring",
        "rte_net_memif",
        "rte_net_null",
        "rte_net_ring",
        "rte_net_tap",
        "rte_net_af_packet",
        "rte_net_af_xdp",
    ];
    /// The libraries those drivers and the port need, each after the ones that call it.
    const STATIC_LIBS: [&str; 13] = [
        "rte_gso",
        "rte_ethdev",
        "rte_meter",
        "rte_net",
        "rte_pci",
        "rte_hash",
        "rte_rcu",
        "rte_mbuf",
        "rte_mempool",
        "rte_ring",
        "rte_eal",
        "rte_telemetry",
        "rte_kvargs",
    ];
    /// System libraries the static archives call (EAL: NUMA, libbsd's strlcpy, dlopen; the
    /// af_xdp driver: libxdp, libbpf and theirs); libdpdk-dev depends on their -dev packages.
    const STATIC_SYSTEM: [&str; 8] = ["xdp", "bpf", "elf", "z", "numa", "bsd", "dl", "m"];

    /// The `dpdk-static` link: DPDK's archives instead of its shared libraries, so its
    /// per-lcore variables are plain thread-local accesses (no `__tls_get_addr` per mempool
    /// cache look-up) and calls into the driver and mempool are direct (no PLT).
    fn link_static() {
        for lib in STATIC_DRIVERS {
            println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={lib}");
        }
        for lib in STATIC_LIBS {
            println!("cargo:rustc-link-lib=static:-bundle={lib}");
        }
        for lib in STATIC_SYSTEM {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    /// `pkg-config <args> libdpdk`, split into words; stops the build with a clear message
    /// when libdpdk-dev is missing.
    fn pkg_config(args: &[&str]) -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("libdpdk")
            .output()
            .unwrap_or_else(|e| panic!("the dpdk feature needs pkg-config ({e}); apt-get install pkg-config libdpdk-dev"));
        if !out.status.success() {
            panic!(
                "the dpdk feature needs DPDK's development files (apt-get install libdpdk-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn build() {
        for f in ["dpdk/shim.c", "dpdk/shim.h", "dpdk/bindings.h"] {
            println!("cargo:rerun-if-changed={f}");
        }
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        let cflags = pkg_config(&["--cflags"]);
        let mut cc = cc::Build::new();
        cc.file("dpdk/shim.c")
            .include("dpdk")
            .opt_level(3)
            .warnings(true);
        for f in &cflags {
            cc.flag(f);
        }
        cc.compile("lb_dpdk_shim");

        for word in pkg_config(&["--libs-only-L"]) {
            if let Some(dir) = word.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        if cfg!(feature = "dpdk-static") {
            link_static();
        } else {
            for lib in LIBS {
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }

        let bindings = bindgen::Builder::default()
            .header("dpdk/bindings.h")
            .clang_args(&cflags)
            .clang_arg("-Idpdk")
            .allowlist_function("lb_.*")
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_eal_get_runtime_dir")
            .allowlist_function("rte_eal_hotplug_(add|remove)")
            .allowlist_function("rte_eth_dev_get_port_by_name")
            .allowlist_function("rte_eth_dev_(stop|close)")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_mempool_free")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("rte_strerror")
            .allowlist_var("RTE_PKTMBUF_HEADROOM")
            .allowlist_var("LB_MBUF_.*")
            .allowlist_var("SOCKET_ID_ANY")
            .opaque_type("rte_mbuf")
            .opaque_type("rte_mempool")
            .layout_tests(false)
            .generate()
            .expect("bindgen could not read DPDK's headers");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dpdk.rs");
        bindings
            .write_to_file(&out)
            .expect("writing the DPDK bindings");
    }
}
