module github.com/r1-operator/r1-operator/hack/pause

go 1.24.0
