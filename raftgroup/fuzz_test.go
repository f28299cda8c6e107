package raftgroup

import (
	"bufio"
	"bytes"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// FuzzDecodeFrame feeds arbitrary bytes through the frame reader and every
// request and response decoder. Garbage must give an error, never a panic,
// and decoding must never allocate much more than the input's size.
func FuzzDecodeFrame(f *testing.F) {
	for _, seed := range seedFrames() {
		f.Add(seed)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 17, kindAppendEntries})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			h, body, err := readFrame(r)
			if err != nil {
				return
			}
			if cap(body) > len(data) {
				t.Fatalf("frame buffer of %d bytes from %d bytes of input", cap(body), len(data))
			}
			cmd, err := decodeRequest(h.kind, body)
			if err == nil {
				if ae, ok := cmd.(*raft.AppendEntriesRequest); ok && len(ae.Entries) > len(body)/minLogLen+1 {
					t.Fatalf("%d entries from %d bytes", len(ae.Entries), len(body))
				}
			}
			for _, resp := range []interface{}{
				new(raft.AppendEntriesResponse), new(raft.RequestVoteResponse),
				new(raft.RequestPreVoteResponse), new(raft.TimeoutNowResponse),
				new(raft.InstallSnapshotResponse),
			} {
				_ = decodeResponse(body, resp)
			}
		}
	})
}

func seedFrames() [][]byte {
	hdr := raft.RPCHeader{ProtocolVersion: 3, ID: []byte("n1/7"), Addr: []byte("127.0.0.1:9000")}
	frame := func(kind byte, body []byte) []byte {
		b := appendHeader(nil, frameHeader{kind: kind, group: 3, id: 9})
		b = append(b, body...)
		finishFrame(b, 0)
		return b
	}
	ae := &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 4, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 9,
		Entries: []*raft.Log{{Index: 11, Term: 4, Type: raft.LogCommand, Data: []byte("hello"), AppendedAt: time.Unix(100, 5)}}}
	return [][]byte{
		frame(kindAppendEntries, appendAppendEntriesRequest(nil, ae)),
		frame(kindRequestVote, appendRequestVoteRequest(nil, &raft.RequestVoteRequest{RPCHeader: hdr, Term: 5, LastLogIndex: 3})),
		frame(kindRequestPreVote, appendRequestPreVoteRequest(nil, &raft.RequestPreVoteRequest{RPCHeader: hdr, Term: 5})),
		frame(kindAppendEntries|respFlag, append([]byte{statusOK}, appendAppendEntriesResponse(nil, &raft.AppendEntriesResponse{RPCHeader: hdr, Term: 4, Success: true})...)),
		frame(kindRequestVote|respFlag, append([]byte{statusErr}, "boom"...)),
	}
}

// Every message survives an encode/decode round trip unchanged.
func TestWireRoundTrip(t *testing.T) {
	hdr := raft.RPCHeader{ProtocolVersion: 3, ID: []byte("n1/7"), Addr: []byte("127.0.0.1:9000")}
	ae := &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 4, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 9,
		Entries: []*raft.Log{
			{Index: 11, Term: 4, Type: raft.LogCommand, Data: []byte("hello"), Extensions: []byte("x"), AppendedAt: time.Unix(100, 5)},
			{Index: 12, Term: 4, Type: raft.LogNoop},
		}}
	var got raft.AppendEntriesRequest
	if err := decodeAppendEntriesRequest(appendAppendEntriesRequest(nil, ae), &got); err != nil {
		t.Fatal(err)
	}
	if got.Term != 4 || got.PrevLogEntry != 10 || got.PrevLogTerm != 3 || got.LeaderCommitIndex != 9 ||
		string(got.ID) != "n1/7" || string(got.Addr) != "127.0.0.1:9000" || got.ProtocolVersion != 3 || len(got.Entries) != 2 {
		t.Fatalf("append entries: %+v", got)
	}
	e := got.Entries[0]
	if e.Index != 11 || e.Term != 4 || e.Type != raft.LogCommand || string(e.Data) != "hello" || string(e.Extensions) != "x" || !e.AppendedAt.Equal(time.Unix(100, 5)) {
		t.Fatalf("entry: %+v", e)
	}
	if !got.Entries[1].AppendedAt.IsZero() || got.Entries[1].Type != raft.LogNoop {
		t.Fatalf("entry 2: %+v", got.Entries[1])
	}

	is := &raft.InstallSnapshotRequest{RPCHeader: hdr, SnapshotVersion: 1, Term: 2, LastLogIndex: 50, LastLogTerm: 2,
		Configuration: []byte("conf"), ConfigurationIndex: 7, Size: 12345}
	var gotIS raft.InstallSnapshotRequest
	if err := decodeInstallSnapshotRequest(appendInstallSnapshotRequest(nil, is), &gotIS); err != nil {
		t.Fatal(err)
	}
	if gotIS.Size != 12345 || gotIS.LastLogIndex != 50 || string(gotIS.Configuration) != "conf" || gotIS.ConfigurationIndex != 7 {
		t.Fatalf("install snapshot: %+v", gotIS)
	}

	rv := &raft.RequestVoteResponse{RPCHeader: hdr, Term: 9, Granted: true}
	body, err := appendResponse([]byte{statusOK}, rv)
	if err != nil {
		t.Fatal(err)
	}
	var gotRV raft.RequestVoteResponse
	if err := decodeResponse(body, &gotRV); err != nil || gotRV.Term != 9 || !gotRV.Granted {
		t.Fatalf("vote response %+v %v", gotRV, err)
	}
	if err := decodeResponse(append([]byte{statusErr}, "no group"...), &gotRV); err == nil || err.Error() != "raftgroup: remote: no group" {
		t.Fatalf("remote error: %v", err)
	}
}
