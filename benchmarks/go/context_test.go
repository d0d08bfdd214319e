// Go's context package on the rows of benchmarks/bench.py that have a Go target or
// reference, so the figures come from this machine: go test -run '^$' -bench .
package gocontextbench

import (
	"context"
	"testing"
	"time"
)

type key struct{}

var sink error

func BenchmarkErrLive(b *testing.B) {
	root, cancel := context.WithCancel(context.Background())
	defer cancel()
	child, cancelChild := context.WithCancel(root)
	defer cancelChild()
	for i := 0; i < b.N; i++ {
		sink = child.Err()
	}
}

// Cancel the root of a 1,000-deep chain, then ask every node; the figure is per node.
func BenchmarkChainCancel(b *testing.B) {
	const depth = 1000
	nodes := make([]context.Context, depth)
	for i := 0; i < b.N; i += depth {
		b.StopTimer()
		root, cancel := context.WithCancel(context.Background())
		ctx := root
		for j := range nodes {
			ctx, _ = context.WithCancel(ctx)
			nodes[j] = ctx
		}
		b.StartTimer()
		cancel()
		for _, n := range nodes {
			if n.Err() == nil {
				b.Fatal("a node of the chain is not cancelled")
			}
		}
	}
}

func valueAt(depth int) context.Context {
	ctx := context.WithValue(context.Background(), key{}, 1)
	for i := 1; i < depth; i++ {
		ctx = context.WithValue(ctx, i, i)
	}
	return ctx
}

var valueSink any

func BenchmarkValue1(b *testing.B) {
	ctx := valueAt(1)
	for i := 0; i < b.N; i++ {
		valueSink = ctx.Value(key{})
	}
}

func BenchmarkValue50(b *testing.B) {
	ctx := valueAt(50)
	for i := 0; i < b.N; i++ {
		valueSink = ctx.Value(key{})
	}
}

func BenchmarkCreateCancel(b *testing.B) {
	root, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		_, c := context.WithCancel(root)
		c()
	}
}

func BenchmarkTimeoutCreateCancel(b *testing.B) {
	root, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		_, c := context.WithTimeout(root, 5*time.Second)
		c()
	}
}
