// compose-check validates docker-compose.yml with compose-go, the loader Docker Compose itself
// uses: the compose-spec schema, interpolation of ${VARS} from an env file, anchors and merges,
// depends_on targets, and build contexts. It prints the resolved project as YAML, like
// `docker compose config`, for machines without the Docker Compose plugin.
//
//	go run . -file ../../docker-compose.yml -env ../../.env.example
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	file := flag.String("file", "docker-compose.yml", "the compose file")
	envFile := flag.String("env", "", "an env file to interpolate from (like .env)")
	asJSON := flag.Bool("json", false, "print the resolved project as JSON instead of YAML")
	flag.Parse()

	abs, err := filepath.Abs(*file)
	if err != nil {
		fail(err)
	}
	opts := []cli.ProjectOptionsFn{cli.WithWorkingDirectory(filepath.Dir(abs))}
	if *envFile != "" {
		opts = append(opts, cli.WithEnvFiles(*envFile), cli.WithDotEnv)
	}
	options, err := cli.NewProjectOptions([]string{abs}, opts...)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	var out []byte
	if *asJSON {
		out, err = project.MarshalJSON()
	} else {
		out, err = project.MarshalYAML()
	}
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
	os.Exit(1)
}
