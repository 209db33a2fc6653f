//! `deploy/docker-compose.yml` cannot be run here (no Docker engine), so this test checks what
//! can go wrong without running it: the file parses, names the services, builds encore from the
//! Dockerfile in this repository, wires every program to the same broker, topic and database,
//! and makes the flow-i services one consistent timely cluster (`-n` the number of them, `-p`
//! 0..N-1 each once, the mounted hostfile naming service flow-i on line i). The monitoring
//! beside it: Prometheus's config (deploy/prometheus/prometheus.yml) parses and scrapes exactly
//! the flow services' metrics endpoints, and Grafana gets the dashboard and the data source
//! from the files this repository mounts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const TOPIC: &str = "music_streaming_data";

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    #[serde(default)]
    configs: BTreeMap<String, Config>,
}

/// A top-level config: a file's content given inline.
#[derive(Debug, Deserialize)]
struct Config {
    content: Option<String>,
}

/// A config mounted into a service's container.
#[derive(Debug, Deserialize)]
struct ConfigMount {
    source: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    depends_on: BTreeMap<String, DependsOn>,
    #[serde(default)]
    configs: Vec<ConfigMount>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    volumes: Vec<String>,
    stop_signal: Option<String>,
    restart: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    context: String,
    dockerfile: String,
}

#[derive(Debug, Deserialize)]
struct DependsOn {
    condition: String,
}

fn compose() -> Compose {
    let path = Path::new(DEPLOY_DIR).join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("deploy/docker-compose.yml is readable");
    serde_norway::from_str(&text).expect("deploy/docker-compose.yml parses as a compose file")
}

impl Compose {
    fn service(&self, name: &str) -> &Service {
        self.services.get(name).unwrap_or_else(|| panic!("service {name} is missing"))
    }
}

impl Service {
    /// The value following `flag` in the command line.
    fn flag(&self, flag: &str) -> &str {
        let position = self.command.iter().position(|arg| arg == flag).unwrap_or_else(|| panic!("{flag} missing from {:?}", self.command));
        self.command.get(position + 1).unwrap_or_else(|| panic!("{flag} has no value in {:?}", self.command))
    }

    fn waits_for(&self, service: &str, condition: &str) -> bool {
        self.depends_on.get(service).is_some_and(|dependency| dependency.condition == condition)
    }
}

impl Compose {
    /// The encore-flow services, flow-0, flow-1, …, by name.
    fn flow_services(&self) -> Vec<(&str, &Service)> {
        let flows: Vec<(&str, &Service)> =
            self.services.iter().filter(|(name, _)| name.starts_with("flow-")).map(|(name, service)| (name.as_str(), service)).collect();
        assert!(!flows.is_empty(), "flow-i services");
        flows
    }
}

/// The `host:port` lines of a hostfile, as encore-flow reads them (trimmed, without empty
/// lines and # comments).
fn hostfile_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect()
}

#[test]
fn the_flow_services_form_one_timely_cluster() {
    let compose = compose();
    let flows = compose.flow_services();
    let n = flows.len();
    assert!(n >= 2, "more than one process, or there is no cluster");
    let mut processes = Vec::new();
    let mut workers = Vec::new();
    for (name, flow) in &flows {
        assert_eq!(flow.flag("-n"), n.to_string(), "{name}: -n is the number of flow services");
        let p: usize = flow.flag("-p").parse().unwrap_or_else(|_| panic!("{name}: -p is a number"));
        // The name says the index, so that "flow-1" in logs is process 1.
        assert_eq!(name.strip_prefix("flow-"), Some(p.to_string().as_str()), "{name} runs -p {p}");
        processes.push(p);
        workers.push(flow.flag("-w").to_owned());

        // The hostfile: a compose config mounted at the path given to -h.
        let hostfile = flow.flag("-h");
        let mount = flow
            .configs
            .iter()
            .find(|mount| mount.target == hostfile)
            .unwrap_or_else(|| panic!("{name}: a config is mounted at {hostfile}"));
        let content = compose
            .configs
            .get(&mount.source)
            .and_then(|config| config.content.as_deref())
            .unwrap_or_else(|| panic!("{name}: config {} has inline content", mount.source));
        let lines = hostfile_lines(content);
        assert_eq!(lines.len(), n, "{name}: one hostfile line per process");
        for (index, line) in lines.iter().enumerate() {
            let (host, port) = line.rsplit_once(':').unwrap_or_else(|| panic!("host:port, got {line:?}"));
            assert_eq!(host, format!("flow-{index}"), "line {index} is process {index}: service flow-{index}");
            assert!(port.parse::<u16>().is_ok_and(|port| port > 0), "a port in {line:?}");
            assert!(compose.services.contains_key(host), "{host} is a service");
        }

        // Stopping commits (SIGINT), and a lost peer restarts the process.
        assert_eq!(flow.stop_signal.as_deref(), Some("SIGINT"), "{name}");
        assert_eq!(flow.restart.as_deref(), Some("on-failure"), "{name}");
    }
    // Each process serves metrics in its container, published on its own host port.
    let mut host_ports = Vec::new();
    for (name, flow) in &flows {
        let (_, port) = flow.flag("--metrics-addr").rsplit_once(':').expect("HOST:PORT");
        let published: Vec<&String> = flow.ports.iter().filter(|mapping| mapping.ends_with(&format!(":{port}"))).collect();
        assert_eq!(published.len(), 1, "{name}: the metrics port is published");
        assert!(published[0].starts_with("127.0.0.1:"), "{name}: on the host's loopback only");
        host_ports.push(published[0].split(':').nth(1).expect("host port").to_owned());
    }
    host_ports.sort();
    host_ports.dedup();
    assert_eq!(host_ports.len(), n, "a host port per process");

    processes.sort_unstable();
    assert_eq!(processes, (0..n).collect::<Vec<_>>(), "-p values are 0..N-1, each once");
    assert!(workers.windows(2).all(|pair| pair[0] == pair[1]), "the same -w everywhere");
    let partitions: usize = compose.service("create-topic").flag("--partitions").parse().expect("partitions");
    let per_process: usize = workers[0].parse().expect("-w is a number");
    assert!(partitions >= n * per_process, "partitions ≥ total workers, or some read nothing");
}

#[test]
fn the_compose_file_names_the_services() {
    let compose = compose();
    let names: Vec<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(names, ["catalog", "create-topic", "flow-0", "flow-1", "generator", "grafana", "kafka", "postgres", "prometheus"]);
}

#[test]
fn kafka_is_the_official_image_in_single_node_kraft_mode() {
    let compose = compose();
    let kafka = compose.service("kafka");
    assert!(kafka.image.as_deref().is_some_and(|image| image.starts_with("apache/kafka:")));
    assert_eq!(kafka.environment["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert_eq!(kafka.environment["KAFKA_CONTROLLER_QUORUM_VOTERS"], "1@kafka:9093");
    assert!(!kafka.environment.keys().any(|key| key.contains("ZOOKEEPER")));
    // Explicit topic creation only, as with Tansu.
    assert_eq!(kafka.environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false");

    let postgres = compose.service("postgres");
    assert!(postgres.image.as_deref().is_some_and(|image| image.starts_with("postgres:15")));
}

/// The address other containers use: the PLAINTEXT entry of the advertised listeners.
fn advertised_broker(compose: &Compose) -> String {
    let listeners = &compose.service("kafka").environment["KAFKA_ADVERTISED_LISTENERS"];
    listeners.split(',').find_map(|listener| listener.strip_prefix("PLAINTEXT://")).expect("a PLAINTEXT advertised listener").to_owned()
}

#[test]
fn every_program_uses_the_same_broker_topic_and_database() {
    let compose = compose();
    let broker = advertised_broker(&compose);
    assert_eq!(broker, "kafka:9092");

    let create_topic = compose.service("create-topic");
    assert!(create_topic.entrypoint[0].ends_with("kafka-topics.sh"));
    assert_eq!(create_topic.flag("--bootstrap-server"), broker);
    assert_eq!(create_topic.flag("--topic"), TOPIC);
    assert!(create_topic.flag("--partitions").parse::<u32>().is_ok_and(|n| n > 0));

    let generator = compose.service("generator");
    assert_eq!(generator.command[..2], ["encore-gen", "stream"]);
    assert_eq!(generator.flag("--brokers"), broker);
    assert_eq!(generator.flag("--topic"), TOPIC);
    assert_eq!(generator.flag("--events"), "0");
    assert!(generator.waits_for("create-topic", "service_completed_successfully"));

    let flows = compose.flow_services();
    let flow = flows[0].1;
    for (name, flow) in &flows {
        assert_eq!(flow.command[0], "encore-flow", "{name}");
        assert_eq!(flow.flag("--brokers"), broker, "{name}");
        assert_eq!(flow.flag("--topic"), TOPIC, "{name}");
        assert_eq!(flow.flag("--postgres"), flows[0].1.flag("--postgres"), "{name}");
        assert!(flow.waits_for("create-topic", "service_completed_successfully"), "{name}");
        assert!(flow.waits_for("postgres", "service_healthy"), "{name}");
    }

    let catalog = compose.service("catalog");
    assert_eq!(catalog.command[..2], ["encore-gen", "catalog"]);
    assert_eq!(catalog.flag("--postgres"), flow.flag("--postgres"));
    assert_eq!(catalog.flag("--seed"), generator.flag("--seed"), "catalog and events from one seed");
    assert!(catalog.waits_for("postgres", "service_healthy"));
    // The database URL names the postgres service.
    assert!(flow.flag("--postgres").contains("@postgres:5432/"));
}

#[test]
fn encore_is_built_from_the_dockerfile_in_this_repository() {
    let compose = compose();
    for name in ["catalog", "generator", "flow-0", "flow-1"] {
        let service = compose.service(name);
        let build = service.build.as_ref().unwrap_or_else(|| panic!("{name} is built from this repository"));
        let context = Path::new(DEPLOY_DIR).join(&build.context);
        let dockerfile = context.join(&build.dockerfile);
        assert!(dockerfile.is_file(), "{} exists", dockerfile.display());
        assert!(context.join("Cargo.toml").is_file(), "the context is the workspace root");
        assert_eq!(service.image.as_deref(), Some("encore:local"));
    }

    let dockerfile = std::fs::read_to_string(Path::new(DEPLOY_DIR).join("Dockerfile")).expect("deploy/Dockerfile is readable");
    assert!(dockerfile.contains("cargo build --release"));
    // librdkafka links OpenSSL (Kafka TLS), and sslrootcert=system (Postgres over TLS) reads
    // the system's roots: the slim image has neither.
    assert!(dockerfile.contains("install -y --no-install-recommends ca-certificates libssl3"));
    for (binary, krate) in [("encore-gen", "generator"), ("encore-flow", "dataflow")] {
        assert!(dockerfile.contains(&format!("--bin {binary}")), "the image builds {binary}");
        let manifest = std::fs::read_to_string(Path::new(DEPLOY_DIR).join(format!("../{krate}/Cargo.toml")))
            .expect("the crate's manifest is readable");
        assert!(manifest.contains(&format!("name = \"{binary}\"")), "{krate} defines the binary {binary}");
    }
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "multi-stage: a builder and a slim runtime"
    );
}

/// deploy/prometheus/prometheus.yml, the parts encore sets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusConfig {
    global: PrometheusGlobal,
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusGlobal {
    scrape_interval: String,
    evaluation_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrapeConfig {
    job_name: String,
    #[serde(default)]
    metrics_path: Option<String>,
    static_configs: Vec<StaticConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticConfig {
    targets: Vec<String>,
}

/// A short-syntax bind mount `SOURCE:TARGET[:ro]`, its source resolved against deploy/ (the
/// compose file's directory, from which compose resolves relative paths).
fn bind_mount(mount: &str) -> (std::path::PathBuf, &str, bool) {
    let parts: Vec<&str> = mount.split(':').collect();
    assert!(matches!(parts.len(), 2 | 3), "SOURCE:TARGET[:MODE], got {mount:?}");
    assert!(parts[0].starts_with("./"), "a path in this repository: {mount:?}");
    (Path::new(DEPLOY_DIR).join(parts[0]), parts[1], parts.get(2) == Some(&"ro"))
}

/// The mount of `service` whose container path is `target`: its source on the host.
fn mounted_at(service: &Service, target: &str) -> std::path::PathBuf {
    let mounts: Vec<_> = service.volumes.iter().map(|mount| bind_mount(mount)).filter(|(_, t, _)| *t == target).collect();
    assert_eq!(mounts.len(), 1, "one mount at {target} in {:?}", service.volumes);
    let (source, _, read_only) = mounts.into_iter().next().expect("one mount");
    assert!(read_only, "{target} is mounted read-only: the repository's file is the one to change");
    assert!(source.exists(), "{} exists", source.display());
    source
}

/// `image` is `repository:TAG` with a version tag (digits and dots, an optional leading `v`),
/// not `latest`: the setup must not change under the user.
fn assert_pinned(image: Option<&str>, repository: &str) {
    let image = image.unwrap_or_else(|| panic!("{repository}: an image"));
    let tag = image.strip_prefix(&format!("{repository}:")).unwrap_or_else(|| panic!("{image} is the official {repository}"));
    let version = tag.strip_prefix('v').unwrap_or(tag);
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())),
        "{image}: a pinned MAJOR.MINOR.PATCH version"
    );
}

/// A port published on the host's loopback only, `127.0.0.1:HOST:CONTAINER`.
fn assert_loopback_port(service: &Service, container_port: u16) {
    assert!(
        service.ports.iter().any(|mapping| mapping.starts_with("127.0.0.1:") && mapping.ends_with(&format!(":{container_port}"))),
        "port {container_port} published on 127.0.0.1 only: {:?}",
        service.ports
    );
    assert!(service.ports.iter().all(|mapping| mapping.starts_with("127.0.0.1:")), "{:?}", service.ports);
}

#[test]
fn prometheus_scrapes_every_flow_process_where_it_serves_its_metrics() {
    let compose = compose();
    let prometheus = compose.service("prometheus");
    assert_pinned(prometheus.image.as_deref(), "prom/prometheus");
    let config_path = prometheus
        .command
        .iter()
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .unwrap_or_else(|| panic!("--config.file= in {:?}", prometheus.command));
    let source = mounted_at(prometheus, config_path);
    assert_eq!(source.canonicalize().ok(), Path::new(DEPLOY_DIR).join("prometheus/prometheus.yml").canonicalize().ok());
    assert_loopback_port(prometheus, 9090);

    let text = std::fs::read_to_string(&source).expect("prometheus.yml is readable");
    let config: PrometheusConfig = serde_norway::from_str(&text).expect("prometheus.yml parses");
    for interval in [&config.global.scrape_interval, &config.global.evaluation_interval] {
        let seconds = interval.strip_suffix('s').and_then(|n| n.parse::<u32>().ok());
        assert!(seconds.is_some_and(|s| s > 0), "an interval in seconds, got {interval:?}");
    }
    let job = config.scrape_configs.iter().find(|job| job.job_name == "encore-flow").expect("a scrape job encore-flow");
    assert!(job.metrics_path.as_deref().is_none_or(|path| path == "/metrics"), "encore-flow serves /metrics");
    let mut targets: Vec<&str> =
        config.scrape_configs.iter().flat_map(|job| &job.static_configs).flat_map(|c| &c.targets).map(String::as_str).collect();
    targets.sort_unstable();

    // Every flow service's endpoint, as another container reaches it: the service name and the
    // port --metrics-addr binds on every interface of its container (not loopback: Prometheus
    // runs in a container of its own).
    let mut expected = Vec::new();
    for (name, flow) in compose.flow_services() {
        let addr = flow.flag("--metrics-addr");
        let (host, port) = addr.rsplit_once(':').expect("HOST:PORT");
        assert_eq!(host, "0.0.0.0", "{name}: --metrics-addr {addr} must be reachable from the prometheus container");
        expected.push(format!("{name}:{port}"));
    }
    expected.sort();
    assert_eq!(targets, expected, "the scrape targets are the flow services' metrics endpoints, each once");
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_prometheus() {
    let compose = compose();
    let grafana = compose.service("grafana");
    assert_pinned(grafana.image.as_deref(), "grafana/grafana");
    assert_loopback_port(grafana, 3000);
    assert!(grafana.waits_for("prometheus", "service_started"));

    // The provisioning folder: a Prometheus data source at the prometheus service.
    let provisioning = mounted_at(grafana, "/etc/grafana/provisioning");
    #[derive(Deserialize)]
    struct Datasources {
        datasources: Vec<Datasource>,
    }
    #[derive(Deserialize)]
    struct Datasource {
        #[serde(rename = "type")]
        kind: String,
        uid: String,
        url: String,
    }
    let read = |file: &str| std::fs::read_to_string(provisioning.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let datasources: Datasources = serde_norway::from_str(&read("datasources/prometheus.yml")).expect("the data sources parse");
    let [datasource] = &datasources.datasources[..] else { panic!("one data source") };
    assert_eq!(datasource.kind, "prometheus");
    assert!(!datasource.uid.is_empty());
    assert_eq!(datasource.url, "http://prometheus:9090", "the prometheus service, on the port it listens on");
    assert!(!compose.service("prometheus").command.iter().any(|arg| arg.starts_with("--web.listen-address")), "9090 is the default");

    // The dashboard provider reads a folder; the dashboard is mounted into it.
    #[derive(Deserialize)]
    struct Providers {
        providers: Vec<Provider>,
    }
    #[derive(Deserialize)]
    struct Provider {
        #[serde(rename = "type")]
        kind: String,
        options: ProviderOptions,
    }
    #[derive(Deserialize)]
    struct ProviderOptions {
        path: String,
    }
    let providers: Providers = serde_norway::from_str(&read("dashboards/encore.yml")).expect("the dashboard providers parse");
    let [provider] = &providers.providers[..] else { panic!("one dashboard provider") };
    assert_eq!(provider.kind, "file");
    let target = format!("{}/encore.json", provider.options.path.trim_end_matches('/'));
    let dashboard = mounted_at(grafana, &target);
    assert_eq!(dashboard.canonicalize().ok(), encore_testkit::grafana::dashboard_path().canonicalize().ok());
    assert_eq!(grafana.environment.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"), Some(&target), "the home dashboard");
}
