package respserver

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

// readMode is a connection's CLIENT READMODE: its name as CLIENT READMODE
// reports it, and the options of its reads.
type readMode struct {
	name string
	get  []gridkv.ReadOption // GET, EXISTS, TTL, PTTL
	scan []gridkv.ReadOption // SCAN: Quorum does not apply to a scan
}

// parseReadMode reads CLIENT READMODE's arguments: lease, readindex,
// quorum N or stale.
func parseReadMode(args [][]byte) (readMode, error) {
	mode := strings.ToLower(string(args[0]))
	if mode != "quorum" && len(args) != 1 {
		return readMode{}, fmt.Errorf("ERR syntax error")
	}
	switch mode {
	case "lease":
		return readMode{name: mode}, nil
	case "readindex":
		return readMode{name: mode, get: []gridkv.ReadOption{gridkv.ReadIndex()},
			scan: []gridkv.ReadOption{gridkv.ReadIndex()}}, nil
	case "stale":
		return readMode{name: mode, get: []gridkv.ReadOption{gridkv.Stale()},
			scan: []gridkv.ReadOption{gridkv.Stale()}}, nil
	case "quorum":
		if len(args) != 2 {
			return readMode{}, fmt.Errorf("ERR syntax error: CLIENT READMODE quorum N")
		}
		n, err := strconv.Atoi(string(args[1]))
		if err != nil || n < 1 {
			return readMode{}, fmt.Errorf("ERR quorum must be an integer >= 1")
		}
		return readMode{name: "quorum " + strconv.Itoa(n), get: []gridkv.ReadOption{gridkv.Quorum(n)}}, nil
	}
	return readMode{}, fmt.Errorf("ERR unknown read mode '%s': want lease, readindex, quorum N or stale", clip(args[0]))
}

// cmdClient is CLIENT READMODE (the connection's read mode: set it, or
// read it without an argument), and the subcommands clients send when they
// connect: SETNAME, GETNAME, SETINFO (accepted, not kept).
func cmdClient(s *Server, ctx context.Context, c *conn, args [][]byte) {
	sub := strings.ToLower(string(args[1]))
	switch {
	case sub == "readmode" && len(args) == 2:
		c.wr.WriteBulkString(c.mode.name)
	case sub == "readmode":
		mode, err := parseReadMode(args[2:])
		if err != nil {
			c.wr.WriteError(oneLine(err.Error()))
			return
		}
		c.mode = mode
		c.wr.WriteString("OK")
	case sub == "setname" && len(args) == 3:
		if strings.ContainsAny(string(args[2]), " \r\n") {
			c.wr.WriteError("ERR Client names cannot contain spaces, newlines or special characters.")
			return
		}
		c.name = string(args[2])
		c.wr.WriteString("OK")
	case sub == "getname" && len(args) == 2:
		if c.name == "" {
			c.wr.WriteNull()
			return
		}
		c.wr.WriteBulkString(c.name)
	case sub == "setinfo" && len(args) == 4:
		c.wr.WriteString("OK") // library name and version: accepted, not kept
	case sub == "readmode", sub == "setname", sub == "getname", sub == "setinfo":
		c.wr.WriteError(fmt.Sprintf("ERR wrong number of arguments for 'client|%s' command", sub))
	default:
		c.wr.WriteError(fmt.Sprintf("ERR unknown subcommand '%s'. Try CLIENT READMODE, SETNAME, GETNAME.", clip(args[1])))
	}
}

// cmdCommand answers COMMAND (and COMMAND DOCS, INFO, ...) with an empty
// array and COMMAND COUNT with 0: clients (redis-cli) ask at start and
// do without.
func cmdCommand(s *Server, ctx context.Context, c *conn, args [][]byte) {
	if len(args) > 1 && strings.EqualFold(string(args[1]), "count") {
		c.wr.WriteInt(0)
		return
	}
	c.wr.WriteArray(0)
}

// cmdConfig answers CONFIG GET for the parameters redis-benchmark reads at
// start (save: "", appendonly: "no": nothing is persisted), an empty
// array for any other; other subcommands are errors.
func cmdConfig(s *Server, ctx context.Context, c *conn, args [][]byte) {
	if !strings.EqualFold(string(args[1]), "get") || len(args) != 3 {
		c.wr.WriteError("ERR CONFIG: only CONFIG GET parameter is supported")
		return
	}
	known := map[string]string{"save": "", "appendonly": "no"}
	param := strings.ToLower(string(args[2]))
	v, ok := known[param]
	if !ok {
		c.wr.WriteArray(0)
		return
	}
	c.wr.WriteArray(2)
	c.wr.WriteBulkString(param)
	c.wr.WriteBulkString(v)
}

// cmdInfo is INFO [section]: the server section, Redis-like
// ("# Server\r\nkey:value\r\n..."), with the node, its members and its
// role; and the clients section.
func cmdInfo(s *Server, ctx context.Context, c *conn, args [][]byte) {
	section := "all"
	if len(args) > 1 {
		section = strings.ToLower(string(args[1]))
	}
	var b strings.Builder
	if section == "all" || section == "default" || section == "everything" || section == "server" {
		st := s.db.Status()
		ids := make([]string, len(st.Members))
		for i, m := range st.Members {
			ids[i] = m.ID
		}
		held, rangesHeld := st.Held()
		led, rangesLed := st.Led()
		fmt.Fprintf(&b, "# Server\r\n")
		fmt.Fprintf(&b, "gridkv_node_id:%s\r\n", st.NodeID)
		fmt.Fprintf(&b, "redis_mode:standalone\r\n")
		fmt.Fprintf(&b, "uptime_in_seconds:%d\r\n", int64(time.Since(s.started).Seconds()))
		fmt.Fprintf(&b, "addr:%s\r\n", st.AdvertiseAddr)
		fmt.Fprintf(&b, "gossip_addr:%s\r\n", st.GossipAdvertiseAddr)
		fmt.Fprintf(&b, "members:%d\r\n", len(st.Members))
		fmt.Fprintf(&b, "member_ids:%s\r\n", strings.Join(ids, ","))
		fmt.Fprintf(&b, "ranges:%d\r\n", st.Ranges)
		fmt.Fprintf(&b, "groups:%d\r\n", len(st.Groups))
		fmt.Fprintf(&b, "groups_held:%d\r\n", held)
		fmt.Fprintf(&b, "groups_led:%d\r\n", led)
		fmt.Fprintf(&b, "ranges_held:%d\r\n", rangesHeld)
		fmt.Fprintf(&b, "ranges_led:%d\r\n", rangesLed)
		fmt.Fprintf(&b, "role:%s\r\n", st.Role())
	}
	if section == "all" || section == "default" || section == "everything" || section == "clients" {
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		fmt.Fprintf(&b, "# Clients\r\nconnected_clients:%d\r\n", s.Clients())
	}
	c.wr.WriteBulkString(b.String())
}
