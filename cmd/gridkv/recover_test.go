package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gridkv/gridkv/internal/adminhttp"
)

// gridkv recover sends what the admin endpoint's /recover requires, and
// maps its answers to exit statuses.
func TestRecoverCommand(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get(adminhttp.RecoverHeader))
		if r.URL.Query().Get("group") == "7" {
			http.Error(w, "gridkv: invalid argument: a majority of group 7 is alive", http.StatusConflict)
			return
		}
		w.Write([]byte("group recovered\n"))
	}))
	defer srv.Close()
	admin := strings.TrimPrefix(srv.URL, "http://")
	for _, c := range []struct {
		args   []string
		status int
		out    string
	}{
		{[]string{"-admin", admin, "-group", "0"}, 0, "group recovered\n"},
		{[]string{"-admin", srv.URL, "-group", "3", "-force"}, 0, "group recovered\n"},
		{[]string{"-admin", admin, "-group", "7"}, 1, ""},
		{[]string{"-admin", admin}, 2, ""},
		{[]string{"-admin", admin, "-group", "1", "extra"}, 2, ""},
	} {
		var out, errs bytes.Buffer
		if status := runRecover(context.Background(), c.args, &out, &errs); status != c.status || out.String() != c.out {
			t.Errorf("gridkv recover %q: status %d, output %q (stderr %q); want %d, %q", c.args, status, out.String(), errs.String(), c.status, c.out)
		}
	}
	want := []string{"POST /recover?group=0 1", "POST /recover?force=1&group=3 1", "POST /recover?group=7 1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
