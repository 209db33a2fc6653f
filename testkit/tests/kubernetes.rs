//! `deploy/k8s/encore-flow.yaml` cannot be applied here (no cluster), so this test checks what
//! can go wrong without one: every document parses and is one of the expected kinds; the
//! StatefulSet, its headless Service, the ConfigMap and the Secret refer to each other by the
//! right names, labels and ports; and the container's entrypoint script, run with `sh` for every
//! pod of the set (with stand-ins for `encore-flow` and `getent`), passes `-n` = replicas,
//! `-p` = the pod's ordinal and `-h` a hostfile whose line i names pod i through the Service.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/encore-flow.yaml");

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFEST).expect("deploy/k8s/encore-flow.yaml is readable");
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("every document parses"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The value at `path` (keys separated by '.'), which must be there.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, key| value.get(key).unwrap_or_else(|| panic!("{path}: no {key} in {value:?}")))
}

fn string<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("{path} is a string"))
}

fn labels(value: &Value, path: &str) -> BTreeMap<String, String> {
    serde_norway::from_value(at(value, path).clone()).unwrap_or_else(|e| panic!("{path}: string labels: {e}"))
}

struct Manifest {
    documents: Vec<Value>,
}

impl Manifest {
    fn load() -> Manifest {
        Manifest { documents: documents() }
    }

    /// The one document of `kind`.
    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> =
            self.documents.iter().filter(|document| document.get("kind").and_then(Value::as_str) == Some(kind)).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    }

    fn stateful_set(&self) -> &Value {
        self.one("StatefulSet")
    }

    fn container(&self) -> &Value {
        let containers = at(self.stateful_set(), "spec.template.spec.containers").as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The container's environment, with ConfigMap and Secret references resolved.
    fn environment(&self) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        for variable in at(self.container(), "env").as_sequence().expect("env is a list") {
            let name = string(variable, "name").to_owned();
            let value = if let Some(value) = variable.get("value") {
                value.as_str().expect("a string value").to_owned()
            } else if let Some(reference) = variable.get("valueFrom").and_then(|v| v.get("configMapKeyRef")) {
                let config_map = self.one("ConfigMap");
                assert_eq!(string(reference, "name"), string(config_map, "metadata.name"), "{name}: the ConfigMap");
                string(at(config_map, "data"), string(reference, "key")).to_owned()
            } else if let Some(reference) = variable.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                let secret = self.one("Secret");
                assert_eq!(string(reference, "name"), string(secret, "metadata.name"), "{name}: the Secret");
                string(at(secret, "stringData"), string(reference, "key")).to_owned()
            } else {
                panic!("{name}: a value, a ConfigMap key or a Secret key");
            };
            assert!(environment.insert(name.clone(), value).is_none(), "{name} set once");
        }
        environment
    }

    fn replicas(&self) -> usize {
        at(self.stateful_set(), "spec.replicas").as_u64().expect("replicas is a number") as usize
    }
}

#[test]
fn the_documents_are_the_expected_kinds() {
    let manifest = Manifest::load();
    let mut kinds: Vec<&str> = manifest
        .documents
        .iter()
        .map(|document| {
            assert!(document.get("apiVersion").is_some(), "apiVersion in {document:?}");
            assert!(document.get("metadata").and_then(|m| m.get("name")).is_some(), "a name");
            string(document, "kind")
        })
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["ConfigMap", "Secret", "Service", "StatefulSet"]);
}

#[test]
fn the_stateful_set_and_its_headless_service_match() {
    let manifest = Manifest::load();
    let set = manifest.stateful_set();
    let service = manifest.one("Service");

    // Pod DNS names need a headless Service named by serviceName, published before readiness.
    assert_eq!(string(set, "spec.serviceName"), string(service, "metadata.name"));
    assert_eq!(string(service, "spec.clusterIP"), "None");
    assert_eq!(at(service, "spec.publishNotReadyAddresses").as_bool(), Some(true));
    assert_eq!(string(set, "spec.podManagementPolicy"), "Parallel");
    assert_eq!(string(set, "spec.updateStrategy.type"), "OnDelete", "the pods restart together");
    assert!(manifest.replicas() >= 2, "a cluster of processes");

    // The selectors pick the template's pods.
    let pod_labels = labels(set, "spec.template.metadata.labels");
    for selector in [labels(set, "spec.selector.matchLabels"), labels(service, "spec.selector")] {
        assert!(!selector.is_empty());
        for (key, value) in &selector {
            assert_eq!(pod_labels.get(key), Some(value), "selector {key}={value} matches the pods");
        }
    }

    // One port, the same everywhere: the Service, the container and the hostfile lines.
    let environment = manifest.environment();
    let port: u64 = environment["ENCORE_PORT"].parse().expect("ENCORE_PORT is a number");
    let container_ports = at(manifest.container(), "ports").as_sequence().expect("ports");
    assert_eq!(at(&container_ports[0], "containerPort").as_u64(), Some(port));
    let service_ports = at(service, "spec.ports").as_sequence().expect("ports");
    assert_eq!(at(&service_ports[0], "port").as_u64(), Some(port));
    assert_eq!(string(&service_ports[0], "targetPort"), string(&container_ports[0], "name"));

    assert_eq!(environment["ENCORE_SERVICE"], string(service, "metadata.name"));
    assert_eq!(environment["ENCORE_PROCESSES"], manifest.replicas().to_string(), "N written twice, equal");
    // The hostfile goes where a volume is mounted (the image's root filesystem is not ours).
    let mount = at(manifest.container(), "volumeMounts").as_sequence().expect("volumeMounts");
    let hostfile = Path::new(&environment["ENCORE_HOSTFILE"]);
    assert_eq!(hostfile.parent(), Some(Path::new(string(&mount[0], "mountPath"))));
}

/// The container port named "metrics", which the scrape annotation names too.
fn metrics_port(manifest: &Manifest) -> u64 {
    let ports = at(manifest.container(), "ports").as_sequence().expect("ports");
    let port = ports
        .iter()
        .find(|port| port.get("name").and_then(Value::as_str) == Some("metrics"))
        .and_then(|port| port.get("containerPort"))
        .and_then(Value::as_u64)
        .expect("a container port named metrics");
    // (Not `string`: the key holds dots.)
    let annotation = at(manifest.stateful_set(), "spec.template.metadata.annotations")
        .get("prometheus.io/port")
        .and_then(Value::as_str)
        .expect("a prometheus.io/port annotation");
    assert_eq!(annotation, port.to_string(), "the scrape annotation names the metrics port");
    port
}

/// Runs the container's command for pod `pod` with stand-ins for encore-flow and getent in
/// `dir`; returns the exit status, encore-flow's arguments, the hostfile and stderr.
fn run_entrypoint(manifest: &Manifest, dir: &Path, pod: &str) -> (bool, Vec<String>, String, String) {
    let command: Vec<&str> = at(manifest.container(), "command")
        .as_sequence()
        .expect("command is a list")
        .iter()
        .map(|arg| arg.as_str().expect("string arguments"))
        .collect();
    assert_eq!(command[..2], ["/bin/sh", "-c"], "a shell script");
    let args_file = dir.join(format!("{pod}.args"));
    let hostfile = dir.join(format!("{pod}.hosts"));
    let _ = std::fs::remove_file(&args_file);
    let stub = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("stub");
        assert!(Command::new("chmod").arg("+x").arg(&path).status().expect("chmod").success());
    };
    stub("encore-flow", &format!("for a in \"$@\"; do printf '%s\\n' \"$a\"; done >'{}'", args_file.display()));
    stub("getent", &format!("echo \"$@\" >>'{}/getent.log'", dir.display()));

    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(command[2])
        .env_clear()
        .envs(manifest.environment())
        .env("ENCORE_HOSTFILE", &hostfile)
        .env("HOSTNAME", pod)
        .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
        .output()
        .expect("run the entrypoint");
    let args = std::fs::read_to_string(&args_file).map(|text| text.lines().map(str::to_owned).collect()).unwrap_or_default();
    let hosts = std::fs::read_to_string(&hostfile).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), args, hosts, stderr)
}

#[test]
fn every_pod_runs_its_process_of_one_cluster() {
    let manifest = Manifest::load();
    let dir = tempfile::tempdir().expect("scratch directory");
    let environment = manifest.environment();
    let set_name = string(manifest.stateful_set(), "metadata.name");
    let service = string(manifest.one("Service"), "metadata.name");
    let n = manifest.replicas();
    let expected_hosts: String = (0..n).map(|i| format!("{set_name}-{i}.{service}:{}\n", environment["ENCORE_PORT"])).collect();

    for p in 0..n {
        let pod = format!("{set_name}-{p}");
        let (ok, args, hosts, stderr) = run_entrypoint(&manifest, dir.path(), &pod);
        assert!(ok, "{pod}: {stderr}");
        let hostfile = dir.path().join(format!("{pod}.hosts")).display().to_string();
        let flag = |name: &str| -> &str {
            let position = args.iter().position(|arg| arg == name).unwrap_or_else(|| panic!("{name} in {args:?}"));
            &args[position + 1]
        };
        assert_eq!(flag("-n"), n.to_string(), "{pod}: -n is replicas");
        assert_eq!(flag("-p"), p.to_string(), "{pod}: -p is the pod's ordinal");
        assert_eq!(flag("-h"), hostfile, "{pod}: -h is the written hostfile");
        assert_eq!(flag("-w"), environment["ENCORE_WORKERS"]);
        assert_eq!(flag("--brokers"), environment["ENCORE_BROKERS"]);
        assert_eq!(flag("--topic"), "music_streaming_data");
        assert_eq!(flag("--postgres"), environment["ENCORE_POSTGRES_URL"]);
        let user_info = flag("--postgres").split("://").nth(1).and_then(|rest| rest.split('@').next()).unwrap_or("");
        assert!(!user_info.contains(':'), "{pod}: no password on the command line: {}", flag("--postgres"));
        assert!(!environment["PGPASSWORD"].is_empty(), "{pod}: the password comes from the Secret as PGPASSWORD");
        assert_eq!(flag("--metrics-addr"), format!("0.0.0.0:{}", metrics_port(&manifest)), "{pod}: metrics on the declared port");
        assert_eq!(hosts, expected_hosts, "{pod}: the same hostfile in every pod");
        // Line p names this very pod, which binds it.
        let line = hosts.lines().nth(p).expect("line p");
        assert!(line.starts_with(&format!("{pod}.{service}:")), "{line}");
    }
    let lookups = std::fs::read_to_string(dir.path().join("getent.log")).expect("getent was asked");
    assert!(lookups.contains(&format!("hosts {set_name}-0.{service}")), "{lookups}");

    // A pod beyond ENCORE_PROCESSES (replicas raised alone) refuses to start, saying why.
    let (ok, args, _, stderr) = run_entrypoint(&manifest, dir.path(), &format!("{set_name}-{n}"));
    assert!(!ok && args.is_empty(), "no encore-flow for an extra pod");
    assert!(stderr.contains("set replicas and ENCORE_PROCESSES to the same N"), "{stderr}");
}
