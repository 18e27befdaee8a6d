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
        for lib in LIBS {
            println!("cargo:rustc-link-lib=dylib={lib}");
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
