package e2e

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	brokerreplica "github.com/gecholog/broker/replica"
)

func TestComposeFileDeploysGechologAndScalableBroker(t *testing.T) {
	is := is.New(t)
	p := mustLoadCompose(t)

	gecholog, ok := p.Services["gecholog"]
	is.True(ok) // docker-compose.yml has a gecholog service
	brokerSvc, ok := p.Services["broker"]
	is.True(ok) // docker-compose.yml has a broker service

	t.Run("gecholog", func(t *testing.T) {
		is := is.New(t)
		is.Equal(gecholog.Image, "gecholog/gecholog:latest")
		ports := published(gecholog)
		is.True(slices.Contains(ports, "5380")) // gl is published
		is.True(slices.Contains(ports, "4222")) // NATS is published
		is.True(slices.Contains(ports, "8080")) // the gui is published
		for _, name := range []string{"NATS_TOKEN", "GUI_SECRET", "AISERVICE_API_BASE"} {
			is.Equal(env(gecholog, name), composeEnv[name]) // gecholog gets the variable from the host env
		}
		is.True(gecholog.HealthCheck != nil)                                         // gecholog has a healthcheck, broker waits on it
		is.True(!gecholog.HealthCheck.Disable && len(gecholog.HealthCheck.Test) > 0) // the healthcheck runs a command

		gl, ok := mountAt(gecholog, "/app/conf/gl_config.json")
		is.True(ok)                                    // gl_config.json is mounted where gecholog reads it
		is.Equal(gl.Source, repoPath(t, glConfigFile)) // the repo's gl_config.json is the one mounted
		is.True(gl.ReadOnly)                           // gl_config.json is mounted read-only
		natsConf, ok := mountAt(gecholog, "/app/conf/nats-server.conf")
		is.True(ok)                                                   // nats-server.conf is mounted where gecholog reads it
		is.Equal(natsConf.Source, repoPath(t, "../nats-server.conf")) // the repo's nats-server.conf is the one mounted
		is.True(natsConf.ReadOnly)                                    // nats-server.conf is mounted read-only

		is.True(onNamedVolume(p, gecholog, "/app/working/jetstream")) // the JetStream store is on a named volume
	})

	t.Run("broker", func(t *testing.T) {
		is := is.New(t)
		is.True(brokerSvc.Build != nil)                      // broker is built from this repo
		is.Equal(brokerSvc.Build.Context, repoPath(t, "..")) // build context is the repo root
		is.Equal(brokerSvc.Build.Dockerfile, "Dockerfile")   // built with the repo's Dockerfile
		is.Equal(brokerSvc.ContainerName, "")                // a fixed container_name would stop --scale broker=N
		for _, port := range brokerSvc.Ports {
			is.Equal(port.Published, "")       // a fixed host port would stop --scale broker=N
			is.Equal(port.HostIP, "127.0.0.1") // the listener has no authentication: the host's loopback only
		}
		dep, ok := brokerSvc.DependsOn["gecholog"]
		is.True(ok)                                                         // broker depends on gecholog
		is.Equal(dep.Condition, types.ServiceConditionHealthy)              // broker waits until gl has accepted its config
		is.Equal(env(brokerSvc, "NATS_TOKEN"), env(gecholog, "NATS_TOKEN")) // broker authenticates with gecholog's token
		is.Equal(env(brokerSvc, "GECHOLOG_HOST"), "gecholog")               // broker finds NATS by the gecholog service name
		is.Equal(env(brokerSvc, "DISABLED_TIME"), "10")                     // DISABLED_TIME defaults to the original's 10 minutes
		is.Equal(env(brokerSvc, "BROKER_LOG_FORMAT"), "json")               // logs are JSON inside the container
		// Docker kills a container 10s after SIGTERM unless told otherwise:
		// the replica's drain and its last writes must fit.
		grace := brokerSvc.StopGracePeriod
		is.True(grace != nil && time.Duration(*grace) > brokerreplica.DefaultDrainTimeout+brokerreplica.DefaultWriteDrainTimeout) // stop_grace_period covers the drain
	})

	t.Run("broker healthcheck", func(t *testing.T) {
		is := is.New(t)
		hc := brokerSvc.HealthCheck
		is.True(hc != nil && !hc.Disable) // the broker has a healthcheck
		// The image is distroless: no shell, no curl. The broker binary
		// asks its own /readyz on BROKER_METRICS_ADDR.
		is.Equal([]string(hc.Test), []string{"CMD", entrypoint(t), "healthcheck"}) // the healthcheck runs the image's own binary
		is.True(env(brokerSvc, "BROKER_METRICS_ADDR") != "")                       // the listener it asks is on
		is.True(hc.Interval != nil && *hc.Interval > 0)                            // it runs periodically
		// "broker healthcheck" gives up after 2s; a shorter docker timeout
		// would report a slow answer as a hung check.
		is.True(hc.Timeout != nil && time.Duration(*hc.Timeout) > 2*time.Second) // the healthcheck's timeout is longer than 2s
		is.True(hc.Retries != nil && *hc.Retries > 0)                            // a failed check is retried
		// Until gecholog's NATS answers and the bucket is read, /readyz
		// says 503; the start period keeps that from counting as a failure.
		is.True(hc.StartPeriod != nil && *hc.StartPeriod > 0) // the healthcheck has a start period
	})
}

func TestComposeFileRefusesToStartWithoutNATSToken(t *testing.T) {
	is := is.New(t)
	withoutToken := map[string]string{}
	for k, v := range composeEnv {
		if k != "NATS_TOKEN" {
			withoutToken[k] = v
		}
	}
	// Without NATS_TOKEN gecholog would invent a random token and no broker
	// could ever connect; compose must stop before that.
	_, err := loadCompose(t, withoutToken)
	is.True(err != nil)                                  // loading without NATS_TOKEN fails
	is.True(strings.Contains(err.Error(), "NATS_TOKEN")) // the error names the missing variable
}

func TestComposeMountedNATSConfigEnablesJetStream(t *testing.T) {
	is := is.New(t)
	p := mustLoadCompose(t)
	gecholog := p.Services["gecholog"]
	mount, ok := mountAt(gecholog, "/app/conf/nats-server.conf")
	is.True(ok) // compose mounts a nats-server.conf into gecholog

	token := composeEnv["NATS_TOKEN"]
	t.Setenv("NATS_TOKEN", token) // the config reads the token as $NATS_TOKEN
	opts, err := server.ProcessConfigFile(mount.Source)
	is.NoErr(err) // nats-server accepts the mounted config

	is.Equal(opts.Port, 4222)                                          // NATS listens where gl and the broker connect
	is.Equal(opts.Authorization, token)                                // the token comes from $NATS_TOKEN
	is.True(opts.JetStream)                                            // JetStream is on: the broker keeps router health in a KV bucket
	is.True(strings.HasPrefix(opts.StoreDir, "/app/working/"))         // the store is under /app/working, writable for uid 10001
	is.True(onNamedVolume(p, gecholog, opts.StoreDir))                 // the store dir is on a named volume
	is.True(opts.JetStreamMaxMemory > 0 && opts.JetStreamMaxStore > 0) // JetStream memory and file use are capped

	// Start the same configuration on loopback, with a temporary store.
	opts.Host = "127.0.0.1"
	opts.Port = server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	opts.NoLog = true
	s, err := server.NewServer(opts)
	is.NoErr(err) // the configuration makes a server
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	is.True(s.ReadyForConnections(10 * time.Second)) // the server comes up
	is.True(s.JetStreamEnabled())                    // JetStream runs with these limits

	_, err = nats.Connect(s.ClientURL())
	is.True(errors.Is(err, nats.ErrAuthorization)) // a client without the token is refused

	nc, err := nats.Connect(s.ClientURL(), nats.Token(token))
	is.NoErr(err) // a client with the token gets in
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	kv, err := js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "e2e_deploy"})
	is.NoErr(err) // a file-backed KV bucket fits within the limits
	_, err = kv.Put(t.Context(), "azure.dud", []byte("down"))
	is.NoErr(err) // the bucket takes writes
}

func TestGlConfigHasTheFieldsCurrentGechologRequires(t *testing.T) {
	is := is.New(t)
	c := readGlConfig(t)
	is.True(regexp.MustCompile(`^[A-Z0-9]{8}$`).MatchString(c.GatewayID)) // gl requires 8 upper-case letters or digits
	// gl silently skips parsing a config whose version is the legacy
	// "0.92.1" of the original broker, and then rejects it as empty.
	is.True(c.Version != "" && c.Version != "0.92.1") // version is a current one
	is.Equal(c.GLPort, 5380)
	is.Equal(c.ServiceBus.Hostname, "localhost:4222")           // gl runs next to NATS in the container
	is.Equal(c.ServiceBus.Token, "${NATS_TOKEN}")               // gl takes the token from the container env
	is.Equal(c.ServiceBus.TopicExactLogger, "coburn.gl.logger") // the transaction log subject the docs use
}

func TestGlConfigRoutesDefaultPoolThroughBroker(t *testing.T) {
	is := is.New(t)
	c := readGlConfig(t)

	var paths []string
	for _, r := range c.Routers {
		is.True(broker.ValidPath(r.Path)) // every router path is one gecholog accepts
		paths = append(paths, r.Path)
	}
	for _, pool := range broker.DefaultPools() {
		is.True(slices.Contains(paths, pool.Ingress)) // the default pool's ingress is a gecholog router
		for _, r := range pool.Routers {
			// gl silently keeps the ingress router when the returned
			// gl_path names no router, so a missing one never fails loudly.
			is.True(slices.Contains(paths, r.Path)) // every default pool member is a gecholog router
		}
	}

	for _, layers := range [][][]glProcessor{c.Request.Processors, c.Response.Processors} {
		for _, layer := range layers {
			for _, p := range layer {
				is.True(p.Timeout > 0) // gl waits at most timeout ms for every processor
			}
		}
	}

	req := onTopic(c.Request.Processors, brokerTopic)
	is.Equal(len(req), 1)                                          // exactly one request processor is the broker
	is.True(req[0].Modifier)                                       // only a modifier may replace gl_path
	is.True(!req[0].Async)                                         // the choice must be made before the outbound call
	is.True(slices.Contains(req[0].InputFieldsInclude, "gl_path")) // the broker is sent the ingress path
	is.True(slices.Contains(req[0].OutputFieldsWrite, "gl_path"))  // gl keeps the broker's gl_path

	resp := onTopic(c.Response.Processors, brokerTopic)
	is.Equal(len(resp), 1)                                                     // exactly one response processor is the broker
	is.True(resp[0].Async)                                                     // failure reports must not delay the client
	is.True(!resp[0].Modifier)                                                 // the response context changes nothing
	is.Equal(len(resp[0].OutputFieldsWrite), 0)                                // the broker answers the response context empty
	is.True(slices.Contains(resp[0].InputFieldsInclude, "gl_path"))            // the broker learns which router was used
	is.True(slices.Contains(resp[0].InputFieldsInclude, "egress_status_code")) // the broker learns whether it failed
	is.True(slices.Contains(resp[0].InputFieldsInclude, "inbound_headers"))    // the broker can read Retry-After
}

func TestDockerfileBuildsStaticNonRootBinary(t *testing.T) {
	is := is.New(t)
	f, err := os.Open(dockerfilePath)
	is.NoErr(err)
	defer f.Close()

	var stages [][]string // the instructions of each stage, FROM first
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(strings.ToUpper(line), "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	is.NoErr(sc.Err())
	is.True(len(stages) >= 2) // a build stage and a separate runtime stage

	all := strings.Join(slices.Concat(stages...), "\n")
	is.True(strings.Contains(all, "CGO_ENABLED=0"))                                // the binary is static
	is.True(regexp.MustCompile(`go build .*\./cmd/broker(\s|$)`).MatchString(all)) // it builds ./cmd/broker
	is.True(!strings.Contains(all, "broker-bench"))                                // and not the benchmarks

	var user string
	for _, line := range stages[len(stages)-1] {
		if fields := strings.Fields(line); strings.EqualFold(fields[0], "USER") && len(fields) > 1 {
			user = fields[1]
		}
	}
	is.True(user != "") // the final stage sets a USER
	name := strings.Split(user, ":")[0]
	is.True(name != "root" && name != "0") // the final stage does not run as root
}

// TestDockerfileContextBuildsTheBinary builds ./cmd/broker from exactly the
// files a docker build would see: those .dockerignore lets into the
// context and the build stage COPYs. A new package the binary imports and
// the Dockerfile forgets fails here, not in a user's docker compose up.
func TestDockerfileContextBuildsTheBinary(t *testing.T) {
	is := is.New(t)
	ignore, err := os.ReadFile("../.dockerignore")
	is.NoErr(err)
	dockerfile, err := os.ReadFile(dockerfilePath)
	is.NoErr(err)
	var patterns []string
	for _, line := range strings.Split(string(ignore), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	var copies []string // the sources the build stage copies
	for _, line := range strings.Split(string(dockerfile), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.EqualFold(fields[0], "FROM") && len(copies) > 0 {
			break // the runtime stage copies from the build stage only
		}
		if len(fields) >= 3 && strings.EqualFold(fields[0], "COPY") && !strings.HasPrefix(fields[1], "--") {
			copies = append(copies, fields[1:len(fields)-1]...)
		}
	}
	is.True(len(copies) > 0) // the Dockerfile's build stage COPYs the sources

	dir := t.TempDir()
	root, err := filepath.Abs("..")
	is.NoErr(err)
	is.NoErr(filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(must(filepath.Rel(root, path)))
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !inContext(patterns, rel) || !slices.ContainsFunc(copies, func(c string) bool {
			c = strings.TrimSuffix(strings.TrimPrefix(c, "./"), "/")
			return rel == c || strings.HasPrefix(rel, c+"/")
		}) {
			return nil
		}
		dst := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	}))
	// Built as TestMain builds the replicas' binary, so that the modules
	// come from the build cache: what is checked is that the context holds
	// every file, not the image's build flags.
	build := exec.Command("go", "build", "-race", "-o", filepath.Join(t.TempDir(), "broker"), "./cmd/broker")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./cmd/broker in the docker build context: %v\n%s", err, out)
	}
}
