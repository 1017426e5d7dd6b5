package confcheck

import "testing"

func TestVarFollowsTags(t *testing.T) {
	type inner struct {
		Cmd string `env:"CMD,required"`
	}
	type cfg struct {
		Host  string `env:"HOST" envDefault:"x"`
		Token inner  `envPrefix:"TOKEN_"`
	}
	for path, want := range map[string]string{"Host": "GATEKEEPER_BACKEND_HOST", "Token.Cmd": "GATEKEEPER_BACKEND_TOKEN_CMD"} {
		if got := Var(cfg{}, "GATEKEEPER_BACKEND_", path); got != want {
			t.Errorf("Var(%s) = %s, want %s", path, got, want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("Var of a missing field did not panic")
		}
	}()
	Var(cfg{}, "", "Nope")
}
