package auth

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestGolden pins the wire format of every authsvc message, both ways:
// encoding gives the golden bytes and decoding them gives the value back.
func TestGolden(t *testing.T) {
	cases := []struct {
		file string
		v    any
		zero func() any
	}{
		{"session_request_cookie.json", SessionRequest{Cookie: "eyJhbGciOiJIUzI1NiJ9.e30.sig"}, func() any { return &SessionRequest{} }},
		{"session_request_bearer.json", SessionRequest{Bearer: "static-token_1"}, func() any { return &SessionRequest{} }},
		{"user.json", User{ID: "0b7e6c1a-2f4d-4e8a-9c3b-5d6e7f8a9b0c", Role: "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", Admin: false}, func() any { return &User{} }},
		{"user_admin_no_role.json", User{ID: "0b7e6c1a-2f4d-4e8a-9c3b-5d6e7f8a9b0c", Admin: true}, func() any { return &User{} }},
		{"event_request.json", EventRequest{UserID: "0b7e6c1a-2f4d-4e8a-9c3b-5d6e7f8a9b0c", EventID: "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"}, func() any { return &EventRequest{} }},
		{"event_response_allowed.json", EventResponse{Decision: Allowed}, func() any { return &EventResponse{} }},
		{"event_response_forbidden.json", EventResponse{Decision: Forbidden}, func() any { return &EventResponse{} }},
		{"event_response_not_found.json", EventResponse{Decision: NotFound}, func() any { return &EventResponse{} }},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := json.Marshal(c.v)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", c.file)
			if *update {
				if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update once to create it)", err)
			}
			want = bytes.TrimSpace(want)
			if !bytes.Equal(got, want) {
				t.Fatalf("encode:\n got %s\nwant %s", got, want)
			}
			back := c.zero()
			if err := json.Unmarshal(want, back); err != nil {
				t.Fatal(err)
			}
			if v := reflect.ValueOf(back).Elem().Interface(); !reflect.DeepEqual(v, c.v) {
				t.Fatalf("decode: got %+v, want %+v", v, c.v)
			}
		})
	}
}

func TestCredentialFromRequest(t *testing.T) {
	cases := []struct {
		name   string
		cookie string
		authz  string
		cname  string
		want   SessionRequest
	}{
		{"session cookie among others", "theme=dark; directus_session_token=abc.def.ghi; _ga=GA1.2", "", "", SessionRequest{Cookie: "abc.def.ghi"}},
		{"only other cookies", "theme=dark; foo=bar", "", "", SessionRequest{}},
		{"nothing", "", "", "", SessionRequest{}},
		{"bearer wins over cookie", "directus_session_token=c", "Bearer t0k", "", SessionRequest{Bearer: "t0k"}},
		{"bearer scheme case-insensitive", "", "bearer t0k", "", SessionRequest{Bearer: "t0k"}},
		{"basic auth is not a credential", "directus_session_token=c", "Basic dTpw", "", SessionRequest{Cookie: "c"}},
		{"empty bearer falls back to cookie", "directus_session_token=c", "Bearer ", "", SessionRequest{Cookie: "c"}},
		{"custom cookie name", "directus_session_token=a; my_session=b", "", "my_session", SessionRequest{Cookie: "b"}},
		{"empty cookie value", "directus_session_token=", "", "", SessionRequest{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://x/ws-live", nil)
			if c.cookie != "" {
				r.Header.Set("Cookie", c.cookie)
			}
			if c.authz != "" {
				r.Header.Set("Authorization", c.authz)
			}
			if got := CredentialFromRequest(r, c.cname); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestValidToken(t *testing.T) {
	good := []string{"bogus", "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ.c2ln", "a=b", "x_-~!#$%&'()*+/:<=>?@[]^`{|}", strings.Repeat("a", 4096)}
	bad := []string{"", "a b", "a;b", "a,b", `a"b`, `a\b`, "a\rb", "a\nb", "é", "a\x00", "a\tb", strings.Repeat("a", 4097)}
	for _, s := range good {
		if !ValidToken(s) {
			t.Errorf("ValidToken(%q) = false", s)
		}
	}
	for _, s := range bad {
		if ValidToken(s) {
			t.Errorf("ValidToken(%q) = true", s)
		}
	}
}

func TestPlausible(t *testing.T) {
	jwt := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6IjEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
	for _, r := range []SessionRequest{
		{Cookie: jwt},
		{Bearer: jwt},
		{Bearer: "qJ3vX9s_Lk2-Zp8RtYb1WcQe7HnMuA4d"}, // a generated static token
		{Bearer: "static-token/with+chars~=="},
	} {
		if !r.Plausible() {
			t.Errorf("Plausible(%+v) = false", r)
		}
	}
	for name, r := range map[string]SessionRequest{
		"none":               {},
		"both":               {Cookie: jwt, Bearer: jwt},
		"cookie not a jwt":   {Cookie: "bogus"},
		"cookie static-like": {Cookie: "qJ3vX9s_Lk2-Zp8RtYb1WcQe7HnMuA4d"},
		"two segments":       {Cookie: "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ"},
		"four segments":      {Cookie: jwt + ".x"},
		"empty segment":      {Cookie: "eyJhbGciOiJIUzI1NiJ9..c2ln"},
		"trailing dot":       {Cookie: jwt + "."},
		"padding in jwt":     {Cookie: jwt + "=="},
		"space in jwt":       {Cookie: "eyJ a.b.c"},
		"oversized jwt":      {Cookie: "eyJ" + strings.Repeat("a", MaxTokenBytes) + ".b.c"},
		"short static":       {Bearer: "abc"},
		"static with space":  {Bearer: "abcdefgh ijk"},
		"static with quote":  {Bearer: `abcdefgh"ijk`},
		"padding mid token":  {Bearer: "abcd=efghijk"},
		"only padding":       {Bearer: "========"},
		"oversized static":   {Bearer: strings.Repeat("a", MaxTokenBytes+1)},
		"non-ascii":          {Bearer: "abcdefghé"},
	} {
		if r.Plausible() {
			t.Errorf("%s: Plausible = true", name)
		}
	}
}

func TestValidCookieName(t *testing.T) {
	for _, ok := range []string{"directus_session_token", "a", "x!#$%&'*+-.^_`|~9Z"} {
		if !ValidCookieName(ok) {
			t.Errorf("ValidCookieName(%q) = false, want true", ok)
		}
	}
	for _, bad := range []string{"", "a b", "a;b", "a=b", "a\"b", "a\tb", "é", "a\x7f", "(a)", "a/b", "a,b"} {
		if ValidCookieName(bad) {
			t.Errorf("ValidCookieName(%q) = true, want false", bad)
		}
	}
}
